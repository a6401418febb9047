import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from features import contract
from features.behaviour import PAD_TYPE, Step, type_code
from features.catalog import OOV_INDEX, PAD_INDEX
from features.model_inputs import ModelInputs, build_inputs, ranked_items, stack_inputs


def test_one_user_request_in_the_contract_shapes_and_dtypes(catalog):
    inputs = build_inputs(["a", "b", "zzz"], catalog, 4, 3, exclude=["b", "c", "unknown"])
    idx = catalog.index_of
    assert inputs.history.tolist() == [[PAD_INDEX, idx("a"), idx("b"), OOV_INDEX]]
    assert inputs.history.dtype == np.int64 and inputs.exclude.dtype == np.int64
    # unknown exclusions are dropped, the rest padded to a power of two (Triton batches equal shapes)
    assert inputs.exclude.shape == (1, 16)
    assert sorted(inputs.exclude[0][inputs.exclude[0] != PAD_INDEX].tolist()) == sorted([idx("b"), idx("c")])
    assert inputs.k.tolist() == [[3]] and inputs.k.dtype == np.int32
    # plain item ids: no type known, "unknown" on every step; PAD where the history is PAD
    unknown = type_code("unknown")
    assert inputs.history_types.tolist() == [[PAD_TYPE, unknown, unknown, unknown]]
    assert inputs.history_types.dtype == np.int64
    assert list(inputs.tensors()) == [contract.HISTORY, contract.HISTORY_TYPES, contract.EXCLUDE,
                                      contract.K]


def test_steps_carry_their_event_types_aligned_with_their_items(catalog):
    steps = [Step("a", "view"), Step("b", "cart"), Step("b", "purchase"), Step("zzz", "click")]
    inputs = build_inputs(steps, catalog, 3, 2)
    idx = catalog.index_of
    assert inputs.history.tolist() == [[idx("b"), idx("b"), OOV_INDEX]]  # repeats are steps too
    assert inputs.history_types.tolist() == [[type_code("cart"), type_code("purchase"), type_code("click")]]


def test_a_batch_pads_exclusions_to_the_widest_row(catalog):
    many = [f"x{i}" for i in range(20)]  # unknown: dropped, so the row stays narrow
    rows = [build_inputs(["a"], catalog, 2, 1), build_inputs(["b"], catalog, 2, 5, exclude=["a"]),
            ModelInputs(history=np.zeros((1, 2), np.int64), history_types=np.zeros((1, 2), np.int64),
                        exclude=np.ones((1, 32), np.int64), k=np.array([[2]], np.int32))]
    batch = stack_inputs(rows + [build_inputs([], catalog, 2, 1, exclude=many)])
    assert batch.batch_size == 4 and batch.exclude.shape == (4, 32)
    assert batch.history_types.shape == batch.history.shape == (4, 2)
    assert batch.k[:, 0].tolist() == [1, 5, 2, 1]
    assert batch.exclude[1, 0] == catalog.index_of("a") and (batch.exclude[1, 1:] == PAD_INDEX).all()
    with pytest.raises(ValueError):
        stack_inputs([])


@pytest.mark.parametrize("client", [grpcclient, httpclient])
def test_infer_inputs_carry_names_shapes_and_triton_dtypes(catalog, client):
    inputs = build_inputs(["a", "b"], catalog, 3, 2).infer_inputs(client)
    assert [(i.name(), i.shape(), i.datatype()) for i in inputs] == [
        (contract.HISTORY, [1, 3], "INT64"), (contract.HISTORY_TYPES, [1, 3], "INT64"),
        (contract.EXCLUDE, [1, 16], "INT64"), (contract.K, [1, 1], "INT32")]


def test_answers_map_back_to_items_once_dropping_filler_rows(catalog):
    indices = np.array([catalog.index_of("c"), catalog.index_of("a"), PAD_INDEX])
    scores = np.array([0.9, 0.5, -np.inf], dtype=np.float32)
    ranked = ranked_items(indices, scores, catalog)
    assert [(item.item_id, round(score, 3)) for item, score in ranked] == [("c", 0.9), ("a", 0.5)]
    assert ranked[0][0] is catalog.get("c") and catalog.get("nope") is None
