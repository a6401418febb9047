"""FastAPI dependencies: components live on app.state (set by the lifespan), tests override these."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
    if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.get_secret_value().encode()):
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin token>'")


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
PushHubDep = Annotated[PushHub, Depends(get_push_hub)]
AdminDep = Depends(require_admin)
