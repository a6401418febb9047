"""Compare two answers of the model to the same request.

Two calls are never bit-identical: Triton's dynamic batching puts a request in batches of
different sizes, which changes the order of float summation (~1e-7 on a cosine score). So scores
are compared to within ``SCORE_ATOL``, item ids exactly, except where two items are tied to within
``TIE_ATOL``: float error may legitimately swap those.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCORE_ATOL = 1e-5
TIE_ATOL = 1e-5


def assert_same_ranking(ids, scores, ref_ids, ref_scores, *, score_atol: float = SCORE_ATOL,
                        tie_atol: float = TIE_ATOL, max_moved: float = 1.0) -> None:
    """``ids``/``scores`` (one row or a batch of rows, best first) rank as ``ref_ids``/``ref_scores``:
    scores equal to within ``score_atol`` place by place and item by item; an id may differ from
    the reference only where the two items in that place are tied to within ``tie_atol``; and at
    most ``max_moved`` (a fraction of all places) differ."""
    ids, scores = np.asarray(ids), np.asarray(scores, dtype=np.float64)
    ref_ids, ref_scores = np.asarray(ref_ids), np.asarray(ref_scores, dtype=np.float64)
    assert ids.shape == ref_ids.shape == scores.shape == ref_scores.shape, (ids.shape, ref_ids.shape)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=score_atol)
    rows = zip(*(a.reshape(-1, a.shape[-1]) if a.size else a.reshape(0, 0)
                 for a in (ids, scores, ref_ids, ref_scores)), strict=True)
    for row_ids, row_scores, row_ref_ids, row_ref_scores in rows:
        # an item in both rankings has the same score in both
        ref = dict(zip(row_ref_ids.tolist(), row_ref_scores.tolist(), strict=True))
        common = [(s, ref[i]) for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)
                  if i in ref]
        assert all(np.isclose(s, r, rtol=0, atol=score_atol) for s, r in common), (row_ids, row_ref_ids)
    differ = ids != ref_ids
    # (two -inf are tied too: places past the last item left after exclusions)
    assert np.all(np.isclose(scores[differ], ref_scores[differ], rtol=0, atol=tie_atol)), (ids, ref_ids)
    assert differ.sum() <= max_moved * differ.size, (differ.sum(), ids, ref_ids)


def assert_same_recommendations(got: dict, want: dict, *, context: object = None,
                                score_atol: float = SCORE_ATOL, tie_atol: float = TIE_ATOL) -> None:
    """Two recommendation responses (the REST JSON shape; ``tests.support.grpc.as_dict`` for gRPC)
    from separate model calls for the same request and the same features: every field equal, the
    items ranked alike (``assert_same_ranking``), and an item that is in both described alike.
    Items without a score (popular items: no model call) must match exactly. ``context`` heads
    the failure message."""
    try:
        _assert_same_recommendations(got, want, score_atol, tie_atol)
    except AssertionError as exc:
        if context is None:
            raise
        raise AssertionError(f"{context!r}: {exc}") from exc


def _assert_same_recommendations(got: dict, want: dict, score_atol: float, tie_atol: float) -> None:
    # request_id: every answer has its own (two requests never share one).
    fields, ref_fields = ({k: v for k, v in r.items() if k not in ("items", "request_id")}
                          for r in (got, want))
    assert fields == ref_fields, (fields, ref_fields)
    items, ref_items = got["items"], want["items"]
    assert len(items) == len(ref_items), ([i["item_id"] for i in items], [i["item_id"] for i in ref_items])
    scored = [i["score"] is not None for i in items]
    assert scored == [i["score"] is not None for i in ref_items], (items, ref_items)
    unscored = [(a, b) for a, b, s in zip(items, ref_items, scored, strict=True) if not s]
    assert all(a == b for a, b in unscored), unscored
    assert_same_ranking(*_ids_and_scores(i for i, s in zip(items, scored, strict=True) if s),
                        *_ids_and_scores(i for i, s in zip(ref_items, scored, strict=True) if s),
                        score_atol=score_atol, tie_atol=tie_atol)
    described = {i["item_id"]: {k: v for k, v in i.items() if k != "score"} for i in ref_items}
    for item in items:
        if item["item_id"] in described:
            assert {k: v for k, v in item.items() if k != "score"} == described[item["item_id"]], item


def _ids_and_scores(items) -> tuple[Sequence[str], Sequence[float]]:
    items = list(items)
    return [i["item_id"] for i in items], [i["score"] for i in items]
