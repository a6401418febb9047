from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gateway.deps import PushHubDep
from gateway.errors import documented
from gateway.push import sse
from gateway.routes.recommendations import UserId

router = APIRouter(prefix="/v1/users", tags=["push"],
                   responses=documented(422, 503))


@router.get("/{user_id}/push", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`event: recommendations` with a PushMessage as data, after each of the "
                         "user's cart or purchase events (frequency-capped); comments as keep-alive"},
})
async def push_stream(user_id: UserId, hub: PushHubDep, request: Request) -> StreamingResponse:
    """Server-Sent Events: refreshed recommendations for the user, as they happen."""
    keepalive_s = request.app.state.settings.push_keepalive_ms / 1000
    queue = hub.subscribe(user_id)  # before streaming: "too many streams" is a 503, not a broken stream

    async def events():
        try:
            yield ": connected\n\n"
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield sse("recommendations", data)
        finally:
            hub.unsubscribe(user_id, queue)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
