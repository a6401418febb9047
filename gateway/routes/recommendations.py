from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from features.events import ID_PATTERN
from gateway.deps import ServiceDep
from gateway.errors import documented
from gateway.schemas import Recommendations
from gateway.service import MAX_CATEGORIES, MAX_EXCLUDE

router = APIRouter(prefix="/v1/users", tags=["recommendations"],
                   responses=documented(422, 503))

UserId = Annotated[str, Path(pattern=ID_PATTERN, description="the shop's user id")]


@router.get("/{user_id}/recommendations", response_model=Recommendations)
async def get_recommendations(
    service: ServiceDep,
    user_id: UserId,
    k: Annotated[int, Query(ge=1, le=100, description="number of items (at most the catalog size)")] = 10,
    exclude: Annotated[list[Annotated[str, Query(pattern=ID_PATTERN)]],
                       Query(max_length=MAX_EXCLUDE, description="item ids not to recommend")] = [],  # noqa: B006
    category: Annotated[list[Annotated[str, Query(min_length=1, max_length=64)]],
                        Query(max_length=MAX_CATEGORIES,
                              description="only items in one of these categories")] = [],  # noqa: B006
    max_per_category: Annotated[int | None, Query(ge=0, le=100, description=(
        "at most this many items per primary category (0: no cap; default: the gateway's)"))] = None,
    x_request_id: Annotated[str | None, Header(description=(
        "the client's id for this request (up to 64 of A-Z a-z 0-9 _ . : -); anything else is "
        "replaced by a fresh one. Echoed as request_id and in the X-Request-ID header"))] = None,
) -> Response:
    """Top-k items for the user. Bought, out-of-stock and excluded items never appear (seen items
    neither, unless the gateway is configured otherwise). Unknown users get trending items with
    ``cold_start: true``; when the model fails or is too slow, trending items with
    ``degraded: true`` — still 200, within the gateway's deadline."""
    result = await service.recommend(user_id, k, exclude=exclude, categories=category,
                                     max_per_category=max_per_category, request_id=x_request_id)
    # Serialized here, once: returned as a model, FastAPI would validate it all over again
    # (the hot path of the gateway; response_model above still documents it).
    return Response(result.model_dump_json(), media_type="application/json",
                    headers={"X-Request-ID": result.request_id})
