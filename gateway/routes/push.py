from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.deps import ClientDep, PushHubDep
from gateway.errors import ErrorResponse, documented, error_body
from gateway.push import PushStream, TooManyStreams, retry_after_s
from gateway.routes.recommendations import UserId

router = APIRouter(prefix="/v1/users", tags=["push"], dependencies=[ClientDep],
                   responses=documented(401, 422, 503))


@router.get("/{user_id}/push", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`event: recommendations` with a PushMessage as data, after each of the "
                         "user's cart or purchase events (frequency-capped); comments as keep-alive; "
                         "`event: reconnect` as the last event when the stream's lifetime is over"},
    429: {"model": ErrorResponse,
          "description": "the user has MAX_PUSH_STREAMS_PER_USER streams open; see Retry-After"},
})
async def push_stream(user_id: UserId, hub: PushHubDep, request: Request) -> Response:
    """Server-Sent Events: refreshed recommendations for the user, as they happen."""
    settings = request.app.state.settings
    try:  # before streaming: "too many streams" is a 429 or 503, not a broken stream
        queue = hub.subscribe(user_id, max_per_user=settings.max_push_streams_per_user)
    except TooManyStreams as exc:  # the error handler sets no Retry-After: answered here
        return JSONResponse(status_code=exc.status_code, content=error_body(exc.code, exc.message),
                            headers={"Retry-After": str(retry_after_s(settings.push_keepalive_ms))})
    return PushStream(hub, user_id, queue, keepalive_s=settings.push_keepalive_ms / 1000,
                      lifetime_s=settings.push_stream_lifetime_ms / 1000,
                      send_timeout_s=settings.push_send_timeout_ms / 1000)
