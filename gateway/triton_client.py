"""The gateway's one Triton client: gRPC aio, opened in the lifespan, shared by all requests."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from features import contract as sig
from features.model_inputs import ModelInputs
from gateway.errors import UpstreamUnavailable


class TritonRecommender:
    def __init__(self, url: str, timeout_ms: int, model: str = sig.RECOMMEND) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_ms / 1000
        self._client = grpcclient.InferenceServerClient(url)
        self.sequence_length: int | None = None

    async def connect(self) -> None:
        """Read the ensemble's input shape from its config (the contract) once at start-up."""
        try:
            config = (await self._client.get_model_config(self.model, as_json=True))["config"]
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"Triton at {self.url}: {exc}") from exc
        history = next(i for i in config["input"] if i["name"] == sig.HISTORY)
        self.sequence_length = int(history["dims"][0])

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
        only mean something with that version's catalog, so a rollout never mixes the two."""
        outputs = [grpcclient.InferRequestedOutput(sig.ITEM_INDEX),
                   grpcclient.InferRequestedOutput(sig.SCORE)]
        try:
            result = await self._client.infer(
                self.model, inputs.infer_inputs(grpcclient), outputs=outputs,
                client_timeout=self.timeout_s,
                model_version=str(version) if version is not None and self._pinnable() else "")
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"Triton recommend failed: {exc}") from exc
        return result.as_numpy(sig.ITEM_INDEX)[0], result.as_numpy(sig.SCORE)[0]

    async def close(self) -> None:
        await self._client.close()
