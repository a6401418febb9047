"""GET /v1/items/{item_id}/similar on the real Triton: the answer is SimilarItems' in PyTorch over
the exported item matrix, under the feed's rules (the item itself, out-of-stock items and the
user's bought items left out); an unknown item is a 404 in the error shape."""

from __future__ import annotations

import time

import numpy as np
import torch

from export.model.retrieval import SimilarItems, TopKRetrieval
from features import contract as sig
from features.catalog import PAD_INDEX
from features.events import Event
from features.model_inputs import ranked_items
from tests.support.ranking import assert_same_ranking

USER = "1"
K = 10


def test_similar_items_are_pytorchs_under_the_feeds_rules(gateway, exported):
    service = gateway.app.state.service
    served = service.served
    catalog = served.catalog
    retrieve = torch.jit.load(str(exported.repository / sig.RETRIEVE / str(served.version) / "model.pt"))
    similar = SimilarItems(TopKRetrieval(retrieve.item_embeddings()))
    item_id = served.popular_items[0]
    query = catalog.index_of(item_id)

    def reference(excluded: set[str]) -> tuple[list[str], list[float]]:
        exclude = np.full((1, 1 + len(excluded)), PAD_INDEX, dtype=np.int64)
        exclude[0, 1:] = catalog.indices_of(sorted(excluded))
        with torch.no_grad():
            index, score = similar(torch.tensor([[query]]), torch.from_numpy(exclude),
                                   torch.tensor([[K]], dtype=torch.int32))
        ranked = ranked_items(index[0].numpy(), score[0].numpy(), catalog)
        return [i.item_id for i, _ in ranked], [s for _, s in ranked]

    def answer(**params) -> tuple[list[str], list[float]]:
        response = gateway.get(f"/v1/items/{item_id}/similar", params={"k": K, **params})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["source"] == "model" and not body["degraded"], body
        assert body["item_id"] == item_id and body["model_version"] == served.version
        return [i["item_id"] for i in body["items"]], [i["score"] for i in body["items"]]

    plain_ids, plain_scores = answer()
    assert item_id not in plain_ids and len(plain_ids) == K
    assert_same_ranking(plain_ids, plain_scores, *reference(set()))

    # out of stock: the best two neighbours; bought by the user: the third, and what it had bought
    out_of_stock = set(plain_ids[:2])
    service.inventory.set_quantities({i: 0 for i in out_of_stock})
    try:
        service.store.apply(Event(user_id=USER, item_id=plain_ids[2], event_type="purchase",
                                  ts_ms=int(time.time() * 1000)))
        bought = service.store.get(USER).bought_items
        assert plain_ids[2] in bought
        ids, scores = answer(user_id=USER)
        assert not (set(ids) & (out_of_stock | bought | {item_id}))
        known_bought = {b for b in bought if b in catalog}
        assert_same_ranking(ids, scores, *reference(out_of_stock | known_bought))
    finally:
        service.inventory.set_quantities({i: 1 for i in out_of_stock})


def test_an_unknown_item_is_404_in_the_error_shape(gateway):
    response = gateway.get("/v1/items/no-such-item/similar", params={"k": 3})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_item"
