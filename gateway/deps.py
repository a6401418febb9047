"""FastAPI dependencies: components live on app.state (set by the lifespan), tests override these."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from gateway.errors import Forbidden, Unauthorized, UpstreamUnavailable
from gateway.push import PushHub
from gateway.service import RecommendationService


def get_service(request: Request) -> RecommendationService:
    return request.app.state.service


def get_push_hub(request: Request) -> PushHub:
    hub = getattr(request.app.state, "push_hub", None)
    if hub is None:
        raise UpstreamUnavailable("push is not running on this gateway")
    return hub


_bearer = HTTPBearer(auto_error=False, description="RECSYS_GATEWAY_ADMIN_TOKEN")


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled: set RECSYS_GATEWAY_ADMIN_TOKEN")
    if not token_matches(credentials.credentials if credentials else None, token):
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin token>'")


_client_bearer = HTTPBearer(auto_error=False, description="RECSYS_GATEWAY_API_TOKEN")


def token_matches(presented: str | None, token: SecretStr) -> bool:
    """Constant-time comparison of a presented bearer token with the configured one."""
    return presented is not None and secrets.compare_digest(presented.encode(),
                                                            token.get_secret_value().encode())


def require_client(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_client_bearer)],
) -> None:
    """Event ingestion and push streams: open while no API token is set (development), else
    the bearer token is required. (Without it anyone could create users by the batch, or watch
    any user's carts and purchases.)"""
    token = request.app.state.settings.api_token
    if token is None:
        return
    if not token_matches(credentials.credentials if credentials else None, token):
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <API token>'")


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
PushHubDep = Annotated[PushHub, Depends(get_push_hub)]
AdminDep = Depends(require_admin)
ClientDep = Depends(require_client)
