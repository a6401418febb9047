"""The Triton client never cancels a call it has sent (Triton 2.51 crashes on a cancellation that
races a response): a caller that stops waiting leaves the call to finish in the background. At
start-up it refuses a model whose inputs are not the contract's."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from features import contract as sig
from features.model_inputs import build_inputs
from gateway.errors import UpstreamUnavailable
from gateway.triton_client import ContractMismatch, TritonRecommender


class Result:
    def as_numpy(self, name):
        return {sig.ITEM_INDEX: np.array([[3, 2]]), sig.SCORE: np.array([[0.9, 0.1]])}[name]


class SlowClient:
    """An infer call that answers (or fails) when the test says so; records cancellations."""

    def __init__(self):
        self.release = asyncio.Event()
        self.fail = False
        self.cancelled = 0
        self.finished = 0
        self.closed = False
        self.timeouts = []

    async def infer(self, model, inputs, *, outputs, client_timeout, model_version):
        self.timeouts.append(client_timeout)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.fail:
            raise InferenceServerException("boom")
        return Result()

    async def close(self):
        self.closed = True


@pytest.fixture
def inputs(catalog):
    return build_inputs(["a"], catalog, 3, 2)


def test_a_caller_that_gives_up_does_not_cancel_the_call(inputs):
    async def scenario():
        client = SlowClient()
        triton = TritonRecommender("unused", 10_000, sig.RECOMMEND_FUSED, client=client)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await triton.recommend(inputs, version=2)
        assert triton.in_flight == 1 and client.cancelled == 0
        client.release.set()
        while triton.in_flight:
            await asyncio.sleep(0.01)
        assert client.finished == 1 and client.cancelled == 0 and client.timeouts == [10.0]
        # and a caller that waits gets the answer
        indices, scores = await triton.recommend(inputs)
        assert indices.tolist() == [3, 2] and scores.tolist() == pytest.approx([0.9, 0.1])

    asyncio.run(scenario())


def test_failures_reach_a_waiting_caller_and_are_not_reported_for_an_abandoned_one(inputs):
    unretrieved = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unretrieved.append(ctx))
        client = SlowClient()
        client.fail = True
        triton = TritonRecommender("unused", 10_000, client=client)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await triton.recommend(inputs)
        client.release.set()
        with pytest.raises(UpstreamUnavailable, match="boom"):
            await triton.recommend(inputs)
        while triton.in_flight:
            await asyncio.sleep(0.01)

    asyncio.run(scenario())

    gc.collect()  # an unretrieved task exception is reported when the task is collected
    assert unretrieved == []


def test_close_lets_open_calls_finish_first(inputs):
    async def scenario():
        client = SlowClient()
        triton = TritonRecommender("unused", 10_000, client=client)
        waiting = asyncio.ensure_future(triton.recommend(inputs))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(triton.close())
        await asyncio.sleep(0.05)
        assert not client.closed  # still waiting for the open call
        client.release.set()
        await closing
        assert client.closed and client.cancelled == 0 and (await waiting)[0].tolist() == [3, 2]

        # a call that never ends holds close() only for the drain timeout
        stuck = SlowClient()
        triton = TritonRecommender("unused", 10_000, client=stuck)
        abandoned = asyncio.ensure_future(triton.recommend(inputs))
        await asyncio.sleep(0.01)
        await triton.close(drain_timeout_s=0.05)
        assert stuck.closed and triton.in_flight == 1
        abandoned.cancel()
        stuck.release.set()

    asyncio.run(scenario())


class ConfigClient:
    """Answers ``get_model_config`` with the given inputs (Triton's JSON form: dims as strings)
    and the contract's outputs."""

    def __init__(self, *inputs: tuple[str, int], outputs=(sig.ITEM_INDEX, sig.SCORE)):
        self.config = {"name": "m", "input": [{"name": n, "data_type": "TYPE_INT64", "dims": [str(d)]}
                                              for n, d in inputs],
                       "output": [{"name": n, "data_type": "TYPE_INT64", "dims": ["-1"]} for n in outputs]}

    async def get_model_config(self, model, as_json):
        return {"config": self.config}


def connect(client) -> TritonRecommender:
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND_FUSED, client=client)
    asyncio.run(triton.connect())
    return triton


def test_start_up_reads_the_sequence_length_of_the_contract_inputs():
    client = ConfigClient((sig.HISTORY, 7), (sig.HISTORY_TYPES, 7), (sig.EXCLUDE, -1), (sig.K, 1))
    assert connect(client).sequence_length == 7


def test_a_repository_from_before_history_types_stops_start_up_with_what_to_do():
    old = ConfigClient((sig.HISTORY, 7), (sig.EXCLUDE, -1), (sig.K, 1))
    with pytest.raises(ContractMismatch, match="no HISTORY_TYPES input") as failure:
        connect(old)
    assert "predates the behaviour-aware contract" in str(failure.value)
    assert "re-export" in str(failure.value) and sig.RECOMMEND_FUSED in str(failure.value)


def test_a_model_without_the_contract_names_stops_start_up():
    positional = ConfigClient(("INPUT__0", 7), ("INPUT__1", 7), ("INPUT__2", -1), ("INPUT__3", 1))
    with pytest.raises(ContractMismatch, match="no HISTORY input.*INPUT__0"):
        connect(positional)
    with pytest.raises(ContractMismatch, match="different lengths"):
        connect(ConfigClient((sig.HISTORY, 7), (sig.HISTORY_TYPES, 5), (sig.EXCLUDE, -1), (sig.K, 1)))
    with pytest.raises(ContractMismatch, match="lacks contract tensors K, SCORE"):
        connect(ConfigClient((sig.HISTORY, 7), (sig.HISTORY_TYPES, 7), (sig.EXCLUDE, -1),
                             outputs=(sig.ITEM_INDEX,)))


# --- versions: the recommend ensemble (issue 15) -------------------------------------------------

def ensemble_config(target: str = "libtorch") -> dict:
    """The JSON form of the exporter's ensemble config (export/triton/repository.py)."""
    from export.triton.repository import ServingConfig, model_configs

    config = model_configs(3, 4, ServingConfig(), target)[sig.RECOMMEND]
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class VersionedClient:
    """A Triton whose models answer per version: ``user_tower`` embeds with the version number,
    ``retrieve`` returns it as the item index; the ensemble answers the version it points at
    (its config's steps), whatever the request asked for, as Triton does."""

    def __init__(self, config: dict, ensemble_points_at: int, ready: set[tuple[str, str]] = frozenset()):
        self.config = config
        self.points_at = ensemble_points_at
        self.ready = ready
        self.calls: list[tuple[str, str, list[str]]] = []

    async def get_model_config(self, model, as_json):
        return {"config": self.config}

    async def is_model_ready(self, model, version=""):
        return (model, version) in self.ready

    async def infer(self, model, inputs, *, outputs, client_timeout, model_version):
        self.calls.append((model, model_version, sorted(i.name() for i in inputs)))
        version = self.points_at if model == sig.RECOMMEND else int(model_version)
        if model == sig.USER_TOWER:
            return NamedResult({outputs[0].name(): np.full((1, 4), version, dtype=np.float32)})
        if model == sig.RETRIEVE:  # the user tower's output, passed on as it came
            assert [i.datatype() for i in inputs if i.name() in (sig.USER_EMBEDDING, "INPUT__0")] == ["FP32"]
        answer = {sig.ITEM_INDEX: np.array([[version, version]]), sig.SCORE: np.array([[0.5, 0.4]])}
        answer |= {"OUTPUT__0": answer[sig.ITEM_INDEX], "OUTPUT__1": answer[sig.SCORE]}
        return NamedResult({o.name(): answer[o.name()] for o in outputs})


class NamedResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays[name]


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_the_ensemble_answers_the_version_asked_for_not_the_one_it_points_at(inputs, target):
    """Before the fix the client sent a versioned request to the ensemble unversioned: after a
    promote, a gateway still holding version 1's catalog got version 2's indices."""
    client = VersionedClient(ensemble_config(target), ensemble_points_at=2)
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND, client=client)

    async def scenario():
        await triton.connect()
        return await triton.recommend(inputs, version=1)

    indices, _ = asyncio.run(scenario())
    assert indices.tolist() == [1, 1]
    names = (["INPUT__0", "INPUT__1"], ["INPUT__0", "INPUT__1", "INPUT__2"]) if target == "libtorch" else (
        sorted([sig.HISTORY, sig.HISTORY_TYPES]), sorted([sig.USER_EMBEDDING, sig.EXCLUDE, sig.K]))
    assert client.calls == [(sig.USER_TOWER, "1", names[0]), (sig.RETRIEVE, "1", names[1])]
    # a call without a version still goes to the ensemble in one request
    indices, _ = asyncio.run(triton.recommend(inputs))
    assert indices.tolist() == [2, 2] and client.calls[-1][:2] == (sig.RECOMMEND, "")


def test_an_ensemble_client_that_does_not_know_the_steps_refuses_a_versioned_call(inputs):
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND,
                               client=VersionedClient(ensemble_config(), ensemble_points_at=2))
    with pytest.raises(UpstreamUnavailable, match="may mix versions"):
        asyncio.run(triton.recommend(inputs, version=1))


def test_a_version_is_ready_for_the_ensemble_when_every_step_serves_it():
    ready = {(sig.USER_TOWER, "1"), (sig.RETRIEVE, "1"), (sig.RETRIEVE, "2")}
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND,
                               client=VersionedClient(ensemble_config(), 1, ready))

    async def scenario():
        await triton.connect()
        return await triton.version_ready(1), await triton.version_ready(2)

    assert asyncio.run(scenario()) == (True, False)


class MixingRecommender:
    """Answers with an index past the catalog, as another version's model would."""

    in_flight = 0

    def __init__(self, index: int):
        self.index = index

    async def recommend(self, inputs, version=None):
        return np.array([self.index]), np.array([0.5], dtype=np.float32)


def test_an_index_the_versions_catalog_lacks_is_served_from_the_fallback_not_a_500(catalog, caplog):
    from feature_service.store import InMemoryStore
    from features.user_state import FeatureRules
    from gateway import metrics
    from gateway.inventory import InMemoryInventory
    from gateway.served_model import ServedModel
    from gateway.service import RecommendationService
    from tests.unit.gateway.fakes import FakePublisher

    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({"u1": ["a", "b"]})
    served = ServedModel(version=3, catalog=catalog, popular_items=["c", "a", "e", "b"], sequence_length=4)
    service = RecommendationService(served, store, MixingRecommender(catalog.num_embeddings + 5),
                                    FakePublisher(), InMemoryInventory())
    before = metrics.RECOMMENDATIONS.labels("popular", "version_mismatch")._value.get()
    body = asyncio.run(service.recommend("u1", 2))
    assert body.degraded and body.source == "popular" and [i.item_id for i in body.items] == ["c", "e"]
    assert metrics.RECOMMENDATIONS.labels("popular", "version_mismatch")._value.get() == before + 1
    assert "version 3" in caplog.text
