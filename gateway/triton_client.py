"""The gateway's one Triton client: gRPC aio, opened in the lifespan, shared by all requests.

A call, once sent, is never cancelled. Triton 2.51's gRPC front end crashes (SIGSEGV, or an abort
in gRPC's own sync code) when a cancellation races the call's completion — a client deadline that
fires, or a caller that gives up (triton-inference-server/server issue #7368, fixed in a later
release). ``perf/triton_cancellation.py`` reproduces it: every run that cancelled calls near their
latency killed the server, no run that let them finish did. So a request that outlives its
deadline stops *waiting* (the service answers from its fallback) while the call runs to its end in
the background, still counted in ``in_flight`` (which the service's load shedding reads); the
client deadline (``timeout_ms``) is only a backstop for a server that never answers, and
``close()`` lets open calls finish before it closes the channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from features import contract as sig
from features.model_inputs import ModelInputs
from gateway.errors import UpstreamUnavailable

log = logging.getLogger(__name__)


class ContractMismatch(RuntimeError):
    """The served model's inputs are not the ones this gateway sends: start-up must stop, since
    every request would be rejected."""


def check_contract(model: str, config: dict) -> int:
    """The sequence length of ``model``'s history inputs, from its config (JSON form); raises
    ContractMismatch naming what is missing or inconsistent."""
    inputs = {i["name"]: i for i in config.get("input", [])}
    if sig.HISTORY not in inputs:
        raise ContractMismatch(f"Triton model {model!r} has no {sig.HISTORY} input (its inputs: "
                               f"{', '.join(inputs) or 'none'}): it is not a recommender of this contract")
    if sig.HISTORY_TYPES not in inputs:
        raise ContractMismatch(
            f"Triton model {model!r} has no {sig.HISTORY_TYPES} input: its repository predates the "
            "behaviour-aware contract (an event type per history step) and must be re-exported "
            "(python -m export)")
    lengths = {name: int(inputs[name]["dims"][0]) for name in (sig.HISTORY, sig.HISTORY_TYPES)}
    if len(set(lengths.values())) != 1:
        raise ContractMismatch(f"Triton model {model!r}: {sig.HISTORY} and {sig.HISTORY_TYPES} have "
                               f"different lengths {lengths}; they describe the same steps")
    return lengths[sig.HISTORY]


class TritonRecommender:
    def __init__(self, url: str, timeout_ms: int, model: str = sig.RECOMMEND, *,
                 client: Any | None = None) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_ms / 1000
        self._client = client if client is not None else grpcclient.InferenceServerClient(url)
        self.sequence_length: int | None = None
        self._calls: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        """Infer calls sent and not yet answered, including those whose caller stopped waiting."""
        return len(self._calls)

    async def connect(self) -> None:
        """Read the served model's input shape from its config (the contract) once at start-up,
        and refuse a model whose inputs are not the contract's: every request would fail."""
        try:
            config = (await self._client.get_model_config(self.model, as_json=True))["config"]
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"Triton at {self.url}: {exc}") from exc
        self.sequence_length = check_contract(self.model, config)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def _pinnable(self) -> bool:
        # The ensemble has one version; its steps are pinned to the live version by the rollout.
        return self.model != sig.RECOMMEND

    async def version_ready(self, version: int) -> bool:
        """Triton serves ``version`` (of the fused model, or of the ensemble's retrieve step)."""
        model = self.model if self._pinnable() else sig.RETRIEVE
        try:
            return bool(await self._client.is_model_ready(model, str(version)))
        except InferenceServerException:
            return False

    async def recommend(self, inputs: ModelInputs,
                        version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One user's top k: (item indices, scores), from ``version`` when given: the indices
        only mean something with that version's catalog, so a rollout never mixes the two.
        Cancelling the caller does not cancel the call (see the module docstring)."""
        call = asyncio.ensure_future(self._infer(inputs, version))
        self._calls.add(call)
        call.add_done_callback(self._finished)
        result = await asyncio.shield(call)
        return result.as_numpy(sig.ITEM_INDEX)[0], result.as_numpy(sig.SCORE)[0]

    async def _infer(self, inputs: ModelInputs, version: int | None) -> Any:
        outputs = [grpcclient.InferRequestedOutput(sig.ITEM_INDEX),
                   grpcclient.InferRequestedOutput(sig.SCORE)]
        try:
            return await self._client.infer(
                self.model, inputs.infer_inputs(grpcclient), outputs=outputs,
                client_timeout=self.timeout_s,
                model_version=str(version) if version is not None and self._pinnable() else "")
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"Triton recommend failed: {exc}") from exc

    def _finished(self, call: asyncio.Task) -> None:
        self._calls.discard(call)
        # Read the outcome so that a call nobody waits for any more is not reported as an
        # exception never retrieved; the caller that did wait has already seen it.
        if not call.cancelled():
            call.exception()

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Let open calls finish (at most ``drain_timeout_s``, default: the client deadline),
        then close the channel."""
        if self._calls:
            timeout = self.timeout_s if drain_timeout_s is None else drain_timeout_s
            _, still_open = await asyncio.wait(set(self._calls), timeout=timeout)
            if still_open:
                log.warning("closing the Triton client with %d calls still open", len(still_open))
        await self._client.close()
