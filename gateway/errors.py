"""One error hierarchy; one handler maps it to an HTTP response at the boundary (and the gRPC
front end maps the same classes to gRPC status codes)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException


class RecsysError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details  # goes to the error body (a 503 of an event POST: its event ids)


class InvalidRequest(RecsysError):
    status_code = 422
    code = "invalid_request"


class UnknownItem(InvalidRequest):
    code = "unknown_item"


class ItemNotFound(UnknownItem):
    """The item a path names (``/v1/items/{item_id}/...``) is not in the served catalog."""

    status_code = 404


class NotServed(RecsysError):
    """The model repository has no model for this surface (an export from before it existed)."""

    status_code = 501
    code = "not_served"


class Unauthorized(RecsysError):
    status_code = 401
    code = "unauthorized"


class Forbidden(RecsysError):
    status_code = 403
    code = "forbidden"


class Conflict(RecsysError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(RecsysError):
    status_code = 413
    code = "payload_too_large"


class UpstreamUnavailable(RecsysError):
    status_code = 503
    code = "upstream_unavailable"


class Overloaded(RecsysError):
    status_code = 503
    code = "overloaded"


class ErrorDetail(BaseModel):
    code: str
    message: str
    # per-field problems of a 422; the event ids of a 503 to an event POST (retry with them)
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx the gateway sends has this shape."""

    error: ErrorDetail


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (replacing FastAPI's own 422 shape)."""
    text = {401: "missing or wrong bearer token (admin, or API where one is set)", 403: "admin API disabled",
            404: "unknown item", 501: "the served model repository has no model for this",
            409: "conflicts with the current state", 413: "request body too large",
            422: "invalid request, with the reason", 503: "a dependency is unavailable"}
    return {status: {"model": ErrorResponse, "description": text[status]} for status in statuses}


def error_body(code: str, message: str, **extra: object) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(RecsysError)
    async def _handle(_request: Request, exc: RecsysError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        extra = {"details": exc.details} if exc.details else {}
        return JSONResponse(status_code=exc.status_code,
                            content=error_body(exc.code, exc.message, **extra), headers=headers)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own errors, in our shape. A body it cannot even decode (not UTF-8) is as
        # invalid as malformed JSON, which is a 422.
        status = 422 if exc.status_code == 400 else exc.status_code
        code = {404: "not_found", 405: "method_not_allowed", 422: "invalid_request"}.get(status, "http_error")
        return JSONResponse(status_code=status, content=error_body(code, str(exc.detail)),
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details)
        return JSONResponse(status_code=422,
                            content=error_body("invalid_request", message, details=details))
