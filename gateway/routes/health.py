from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str  # ready | not_ready
    checks: dict[str, bool]
    reasons: dict[str, str] = {}  # why a check is false, where the component can say


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "a dependency is not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """Every dependency answers: Triton's model, Kafka, the feature store, the consumer, push."""
    checks = {name: bool(await check()) for name, check in request.app.state.readiness.items()}
    ok = all(checks.values())
    explain = getattr(request.app.state, "readiness_reasons", {})
    reasons = {name: reason for name, passed in checks.items()
               if not passed and name in explain and (reason := explain[name]())}
    return JSONResponse(status_code=200 if ok else 503,
                        content={"status": "ready" if ok else "not_ready", "checks": checks,
                                 "reasons": reasons})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
