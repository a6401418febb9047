"""Request-body size limit, enforced before the body is read into memory (ASGI middleware)."""

from __future__ import annotations

import json

from gateway.errors import error_body


class BodySizeLimit:
    """413 for a declared Content-Length over ``max_bytes``, and for a chunked body that grows
    past it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        received = 0
        started = responded = False

        async def limited_receive():
            nonlocal received, responded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Answer now and tell the app the client left: it stops reading and its own
                    # response (to a disconnected client) is dropped below.
                    if not started and not responded:
                        await self._reject(send)
                        responded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if responded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not responded:
                raise

    async def _reject(self, send) -> None:
        body = json.dumps(error_body("payload_too_large",
                                     f"request body over {self.max_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

