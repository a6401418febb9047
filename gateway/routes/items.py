"""Item pages: ``GET /v1/items/{item_id}/similar`` (gateway/similar.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from features.events import ID_PATTERN
from gateway.deps import ServiceDep
from gateway.errors import documented
from gateway.schemas import SimilarItems

router = APIRouter(prefix="/v1/items", tags=["items"], responses=documented(404, 422, 501, 503))


@router.get("/{item_id}/similar", response_model=SimilarItems)
async def get_similar_items(
    service: ServiceDep,
    item_id: Annotated[str, Path(pattern=ID_PATTERN, description="the shop's item id")],
    k: Annotated[int, Query(ge=1, le=100, description="number of items (at most the catalog size)")] = 10,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN, description=(
        "the user looking: their bought items are left out"))] = None,
    x_request_id: Annotated[str | None, Header(description=(
        "the client's id for this request, as for recommendations; echoed as request_id and in "
        "the X-Request-ID header"))] = None,
) -> Response:
    """The ``k`` items most like ``item_id`` (cosine over the model's item embeddings, served by
    Triton's ``similar_items``). Never the item itself, nor out-of-stock items, nor (with
    ``user_id``) the user's bought ones. 404 for an item the served catalog does not know; 501
    when the served model repository predates similar items. When the model fails or is too slow:
    trending, then popular items sharing a category with the item, ``degraded: true``, still 200."""
    result = await service.similar(item_id, k, user_id=user_id, request_id=x_request_id)
    return Response(result.model_dump_json(), media_type="application/json",
                    headers={"X-Request-ID": result.request_id})
