"""What the gateway benchmark sends one request to: the gateway's feed or similar items over HTTP,
or Triton directly over gRPC with the inputs the gateway would build for the same user
(perf/load_generator.py drives them; its "user" is whatever key the target's path takes).
"""

from __future__ import annotations

import asyncio
import json

from features import contract as sig
from features.model_inputs import ModelInputs
from perf.load_generator import BAD_BODY, CONNECTION_ERROR, TIMEOUT


class GatewayTarget:
    """``GET /v1/users/{user}/recommendations?k=K`` (the feed) over HTTP/1.1 keep-alive."""

    name = "gateway"
    # {key}: the schedule's entry, URL-safe as it is (snapshot user ids, catalog item ids)
    path = "/v1/users/{key}/recommendations"

    def __init__(self, url: str, k: int, timeout_s: float, max_connections: int, client: str) -> None:
        self.url, self.k, self.timeout_s = url.rstrip("/"), k, timeout_s
        self.max_connections, self.client = max_connections, client
        self._urls: dict[str, object] = {}
        self._session = None

    async def open(self) -> None:
        if self.client == "aiohttp":
            import aiohttp
            import yarl

            self._yarl = yarl
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            self._timeouts: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
            self._conn_errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)
        else:
            import httpx

            limits = httpx.Limits(max_connections=self.max_connections,
                                  max_keepalive_connections=self.max_connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=self.timeout_s)
            self._timeouts = (httpx.TimeoutException, asyncio.TimeoutError)
            self._conn_errors = (httpx.HTTPError, OSError)

    def _url(self, key: str):
        url = self._urls.get(key)
        if url is None:
            text = f"{self.url}{self.path.format(key=key)}?k={self.k}"
            url = self._urls[key] = self._yarl.URL(text, encoded=True) if self.client == "aiohttp" else text
        return url

    async def send(self, user: str) -> tuple[int, bool]:
        """(HTTP status or an error code, degraded flag)."""
        try:
            if self.client == "aiohttp":
                async with self._session.get(self._url(user)) as response:
                    status, body = response.status, await response.read()
            else:
                response = await self._session.get(self._url(user))
                status, body = response.status_code, response.content
        except self._timeouts:
            return TIMEOUT, False
        except self._conn_errors:
            return CONNECTION_ERROR, False
        if status != 200:
            return status, False
        try:
            payload = json.loads(body)
            if not isinstance(payload.get("items"), list):
                return BAD_BODY, False
            return 200, bool(payload.get("degraded"))
        except (ValueError, AttributeError):
            return BAD_BODY, False

    async def close(self) -> None:
        if self._session is not None:
            await (self._session.close() if self.client == "aiohttp" else self._session.aclose())


class SimilarTarget(GatewayTarget):
    """``GET /v1/items/{item}/similar?k=K``: the schedule's entries are catalog item ids. No
    ``user_id``: the comparison with the feed is of the two model paths, and the feed's store read
    is the only per-user work left out (similar items reads the store only for a named user)."""

    name = "similar"
    path = "/v1/items/{key}/similar"


class TritonTarget:
    """The gateway's Triton call for the same user, pre-encoded: one ``infer`` over gRPC aio."""

    name = "triton"

    def __init__(self, url: str, model: str, inputs: dict[str, ModelInputs], timeout_s: float) -> None:
        self.url, self.model, self.inputs, self.timeout_s = url, model, inputs, timeout_s
        self._client = None

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(self.url)

    async def send(self, user: str) -> tuple[int, bool]:
        from tritonclient.utils import InferenceServerException

        g = self._grpc
        inputs = self.inputs[user].infer_inputs(g)
        outputs = [g.InferRequestedOutput(sig.ITEM_INDEX), g.InferRequestedOutput(sig.SCORE)]
        try:
            result = await self._client.infer(self.model, inputs, outputs=outputs,
                                              client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            text = f"{exc.status()} {exc.message()}".lower()
            return (TIMEOUT if "deadline" in text else CONNECTION_ERROR), False
        indices = result.as_numpy(sig.ITEM_INDEX)
        return (200 if indices is not None and indices.shape[0] == 1 else BAD_BODY), False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
