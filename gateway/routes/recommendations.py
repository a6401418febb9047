from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from features.events import ID_PATTERN
from gateway.deps import ServiceDep
from gateway.service import Recommendations

router = APIRouter(prefix="/v1/users", tags=["recommendations"])


@router.get("/{user_id}/recommendations", response_model=Recommendations)
async def get_recommendations(
    service: ServiceDep,
    user_id: Annotated[str, Path(pattern=ID_PATTERN)],
    k: Annotated[int, Query(ge=1, le=100, description="number of items")] = 10,
) -> Recommendations:
    """Top-k items for the user. Unknown users get popular items with ``cold_start: true``;
    if the model is unavailable, popular items with ``degraded: true``."""
    return await service.recommend(user_id, k)
