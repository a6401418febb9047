"""FastAPI dependencies: components live on app.state (set by the lifespan), tests override these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.service import RecommendationService


def get_service(request: Request) -> RecommendationService:
    return request.app.state.service


ServiceDep = Annotated[RecommendationService, Depends(get_service)]
