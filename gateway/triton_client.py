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

Versions. A call for ``version`` N must answer with version N's item indices: they are decoded
with N's catalog. ``recommend_fused`` is asked for version N. The ``recommend`` ensemble cannot be:
an ensemble's steps run the versions its one config names (``model_version: -1``, or the version
the rollout pinned on its last promote or rollback), not the version of the request, and during a
rollout that is not always the version the gateway holds the catalog of (issue 15). So for a
versioned call the client runs the ensemble's steps itself, each asked for version N, with the
tensor names its config maps (``INPUT__i`` for the libtorch target): one version per answer, by
construction. A call without a version still goes to the ensemble in one request.

Tensor names. The client speaks the contract (HISTORY, HISTORY_TYPES, EXCLUDE, K -> ITEM_INDEX,
SCORE) and sends each tensor under the name the served model gives it, read from the config's
``contract_inputs`` / ``contract_outputs`` parameters (``features.contract.tensor_names``): the
contract names under the python target, ``INPUT__i`` / ``OUTPUT__i`` for ``recommend_fused``
under libtorch.

Similar items. ``similar_items`` (ITEM, EXCLUDE, K -> ITEM_INDEX, SCORE) is looked up at connect()
but is optional: a repository exported before it existed has none, and the gateway keeps serving
the feed (``similar`` raises NotServed, a 501). Its calls are pinned to the version like the
feed's, and are counted in ``in_flight`` and never cancelled in the same way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from features import contract as sig
from features.model_inputs import ModelInputs, infer_input
from gateway.errors import NotServed, UpstreamUnavailable

log = logging.getLogger(__name__)


class ContractMismatch(RuntimeError):
    """The served model's inputs are not the ones this gateway sends: start-up must stop, since
    every request would be rejected."""


def contract_names(model: str, config: dict) -> sig.TensorNames:
    """Contract name -> ``model``'s own tensor name (``features.contract.tensor_names``); raises
    ContractMismatch for a contract parameter that does not fit the config."""
    try:
        return sig.tensor_names(config)
    except ValueError as exc:
        raise ContractMismatch(f"Triton model {model!r}: {exc}") from exc


def check_contract(model: str, config: dict) -> int:
    """The sequence length of ``model``'s history inputs, from its config (JSON form; contract
    names mapped onto the model's own by ``contract_names``); raises ContractMismatch naming what
    is missing or inconsistent."""
    names = contract_names(model, config)
    own = {i["name"]: i for i in config.get("input", [])}
    inputs = {contract: own[name] for contract, name in names.inputs.items()}
    if sig.HISTORY not in inputs:
        recorded = (config.get("parameters") or {}).get(sig.CONTRACT_INPUTS, {}).get("string_value")
        raise ContractMismatch(
            f"Triton model {model!r} has no {sig.HISTORY} input (its inputs: {', '.join(own) or 'none'}; "
            f"{sig.CONTRACT_INPUTS}: {recorded or 'not recorded'}): it is not a recommender of "
            "this contract")
    if sig.HISTORY_TYPES not in inputs:
        raise ContractMismatch(
            f"Triton model {model!r} has no {sig.HISTORY_TYPES} input: its repository predates the "
            "behaviour-aware contract (an event type per history step) and must be re-exported "
            "(python -m export)")
    missing = [name for name in (sig.EXCLUDE, sig.K) if name not in inputs] + [
        name for name in (sig.ITEM_INDEX, sig.SCORE) if name not in names.outputs]
    if missing:
        raise ContractMismatch(f"Triton model {model!r} lacks contract tensors {', '.join(missing)} "
                               f"(inputs: {', '.join(names.inputs)}; outputs: {', '.join(names.outputs)})")
    lengths = {name: int(inputs[name]["dims"][0]) for name in (sig.HISTORY, sig.HISTORY_TYPES)}
    if len(set(lengths.values())) != 1:
        raise ContractMismatch(f"Triton model {model!r}: {sig.HISTORY} and {sig.HISTORY_TYPES} have "
                               f"different lengths {lengths}; they describe the same steps")
    return lengths[sig.HISTORY]


SIMILAR_INPUTS = (sig.ITEM, sig.EXCLUDE, sig.K)
SIMILAR_OUTPUTS = (sig.ITEM_INDEX, sig.SCORE)


def similar_names(config: dict) -> sig.TensorNames | None:
    """``similar_items``'s tensor names from its config, or None (logged) when it is not a model
    of this contract: the similar-items route is then not served, the feed is unaffected."""
    try:
        names = sig.tensor_names(config)
    except ValueError as exc:
        log.warning("Triton model %r: %s; similar items are not served", sig.SIMILAR_ITEMS, exc)
        return None
    missing = [n for n in SIMILAR_INPUTS if n not in names.inputs] + [
        n for n in SIMILAR_OUTPUTS if n not in names.outputs]
    if missing:
        log.warning("Triton model %r lacks contract tensors %s; similar items are not served",
                    sig.SIMILAR_ITEMS, ", ".join(missing))
        return None
    return names


@dataclass(frozen=True)
class Step:
    """One step of an ensemble: its model and the names it maps (backend name -> ensemble tensor)."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


def ensemble_steps(config: dict) -> list[Step] | None:
    """The steps of an ensemble config (JSON form), in order; None for a model that is not one."""
    if config.get("platform") != "ensemble":
        return None
    steps = [Step(s["model_name"], dict(s.get("input_map", {})), dict(s.get("output_map", {})))
             for s in config.get("ensemble_scheduling", {}).get("step", [])]
    if not steps:
        raise ContractMismatch(f"ensemble {config.get('name')!r} has no steps")
    return steps


class TritonRecommender:
    def __init__(self, url: str, timeout_ms: int, model: str = sig.RECOMMEND, *,
                 client: Any | None = None) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_ms / 1000
        self._client = client if client is not None else grpcclient.InferenceServerClient(url)
        self.sequence_length: int | None = None
        self.steps: list[Step] | None = None  # set by connect() when ``model`` is an ensemble
        # contract name -> the model's tensor name; set by connect() (before: the contract names)
        self.names = sig.TensorNames({}, {})
        # similar_items' names; None: not served (set by connect())
        self.similar_names: sig.TensorNames | None = None
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
        self.names = contract_names(self.model, config)
        self.steps = ensemble_steps(config)
        await self._connect_similar()

    async def _connect_similar(self) -> None:
        """Look ``similar_items`` up; its absence (an older export) is logged, never fatal."""
        try:
            config = (await self._client.get_model_config(sig.SIMILAR_ITEMS, as_json=True))["config"]
        except InferenceServerException as exc:
            log.warning("Triton has no %r model (%s): GET /v1/items/{id}/similar answers 501 until "
                        "the repository is re-exported", sig.SIMILAR_ITEMS, exc)
            self.similar_names = None
            return
        self.similar_names = similar_names(config)

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def _is_ensemble(self) -> bool:
        # Before connect() has read the config, the contract's name says it (tests build the
        # client without connecting).
        return self.steps is not None or self.model == sig.RECOMMEND

    async def version_ready(self, version: int) -> bool:
        """Triton serves ``version`` of the model, or of every step of the ensemble."""
        if self._is_ensemble():
            if self.steps is None:
                return False  # not connected: the steps are unknown
            models = [step.model for step in self.steps]
        else:
            models = [self.model]
        try:
            return all([bool(await self._client.is_model_ready(m, str(version))) for m in models])
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
        tensors = await asyncio.shield(call)
        return tensors[sig.ITEM_INDEX][0], tensors[sig.SCORE][0]

    async def similar(self, item_index: int, exclude: np.ndarray, k: int,
                      version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items nearest ``item_index`` (indices, scores) from ``similar_items`` version
        ``version``, never one of ``exclude`` (item indices, PAD allowed). NotServed when the
        repository has no such model."""
        if self.similar_names is None:
            raise NotServed(f"the model repository has no {sig.SIMILAR_ITEMS!r} model (exported "
                            "before similar items existed): re-export it to serve this route")
        call = asyncio.ensure_future(self._infer_similar(item_index, exclude, k, version))
        self._calls.add(call)
        call.add_done_callback(self._finished)
        tensors = await asyncio.shield(call)
        return tensors[sig.ITEM_INDEX][0], tensors[sig.SCORE][0]

    async def _infer_similar(self, item_index: int, exclude: np.ndarray, k: int,
                             version: int | None) -> dict[str, np.ndarray]:
        names = self.similar_names
        assert names is not None
        arrays = {sig.ITEM: np.array([[item_index]], dtype=np.int64),
                  sig.EXCLUDE: np.asarray(exclude, dtype=np.int64).reshape(1, -1),
                  sig.K: np.array([[k]], dtype=np.int32)}
        out = {name: names.outputs[name] for name in SIMILAR_OUTPUTS}
        return await self._call(
            sig.SIMILAR_ITEMS, [infer_input(grpcclient, names.inputs[n], a) for n, a in arrays.items()],
            out, version)

    async def _infer(self, inputs: ModelInputs, version: int | None) -> dict[str, np.ndarray]:
        if version is not None and self._is_ensemble():
            return await self._run_steps(inputs.tensors(), version)
        out = {name: self.names.outputs.get(name, name) for name in (sig.ITEM_INDEX, sig.SCORE)}
        return await self._call(self.model, inputs.infer_inputs(grpcclient, self.names.inputs or None),
                                out, version, what="recommend")

    async def _call(self, model: str, infer_inputs: list, out: dict[str, str], version: int | None,
                    what: str | None = None) -> dict[str, np.ndarray]:
        """One inference of ``model`` (at ``version``, if given); ``out`` maps contract output
        names to the model's own. A Triton error is UpstreamUnavailable, the fallback's cue."""
        try:
            result = await self._client.infer(
                model, infer_inputs,
                outputs=[grpcclient.InferRequestedOutput(name) for name in out.values()],
                client_timeout=self.timeout_s,
                model_version=str(version) if version is not None else "")
        except InferenceServerException as exc:
            raise UpstreamUnavailable(f"Triton {what or model} failed: {exc}") from exc
        return {name: result.as_numpy(own) for name, own in out.items()}

    async def _run_steps(self, tensors: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        """The ensemble's steps, each from ``version`` (see the module docstring)."""
        if self.steps is None:
            raise UpstreamUnavailable(f"the steps of ensemble {self.model!r} are unknown (not "
                                      "connected): refusing an answer that may mix versions")
        tensors = dict(tensors)
        for step in self.steps:
            step_inputs = [infer_input(grpcclient, backend, tensors[name])
                           for backend, name in step.input_map.items()]
            outputs = [grpcclient.InferRequestedOutput(backend) for backend in step.output_map]
            try:
                result = await self._client.infer(step.model, step_inputs, outputs=outputs,
                                                  client_timeout=self.timeout_s,
                                                  model_version=str(version))
            except InferenceServerException as exc:
                raise UpstreamUnavailable(f"Triton {step.model} (version {version}) failed: {exc}") from exc
            tensors.update({name: result.as_numpy(backend) for backend, name in step.output_map.items()})
        return tensors

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
