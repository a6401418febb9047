"""One error hierarchy; one handler maps it to an HTTP response at the boundary."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class RecsysError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RecsysError):
    status_code = 422
    code = "invalid_request"


class UnknownItem(InvalidRequest):
    code = "unknown_item"


class UpstreamUnavailable(RecsysError):
    status_code = 503
    code = "upstream_unavailable"


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(RecsysError)
    async def _handle(_request: Request, exc: RecsysError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code,
                            content={"error": {"code": exc.code, "message": exc.message}})
