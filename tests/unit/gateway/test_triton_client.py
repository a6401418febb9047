"""The Triton client never cancels a call it has sent (Triton 2.51 crashes on a cancellation that
races a response): a caller that stops waiting leaves the call to finish in the background. At
start-up it refuses a model whose inputs are not the contract's."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
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
    """Answers ``get_model_config`` with the given inputs (Triton's JSON form: dims as strings)."""

    def __init__(self, *inputs: tuple[str, int]):
        self.config = {"name": "m", "input": [{"name": n, "data_type": "TYPE_INT64", "dims": [str(d)]}
                                              for n, d in inputs]}

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
        connect(ConfigClient((sig.HISTORY, 7), (sig.HISTORY_TYPES, 5)))
