"""The live demo page (``/demo``) and the read-only catalog it shows (``/v1/catalog``).

The page is plain HTML, CSS and JavaScript from ``gateway/static/``: no build step, nothing from
another origin. It posts events to ``/v1/events``, shows ``/v1/users/{id}/recommendations`` and
follows ``/v1/users/{id}/push`` (SSE). The HTML and its assets are left out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from gateway.deps import ServiceDep
from gateway.errors import InvalidRequest, documented

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
PAGE = "demo.html"
# Only the files shipped next to the page, by name: a request can never reach outside the folder.
ASSETS = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}
_NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate (ETag): an upgraded gateway serves new assets

router = APIRouter()


class CatalogItem(BaseModel):
    item_id: str
    title: str
    categories: list[str]
    year: int | None
    price: float | None


class CatalogPage(BaseModel):
    total: int  # items matching the category filter
    offset: int
    limit: int
    model_version: int
    categories: list[str]  # every category of the catalog, for a filter menu
    items: list[CatalogItem]


@router.get("/v1/catalog", response_model=CatalogPage, tags=["catalog"],
            responses=documented(422, 503))
async def get_catalog(
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="items to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=200, description="items in this page")] = 50,
    category: Annotated[str | None, Query(min_length=1, max_length=64,
                                          description="only items in this category")] = None,
    order: Annotated[Literal["popular", "catalog"], Query(description=(
        "popular: the training data's most popular items first, then catalog order"))] = "popular",
) -> CatalogPage:
    """A page of the served model's item catalog (read-only), for browsing clients such as the
    demo page. An unknown category is a 422 naming the known ones."""
    served = service.served  # read once: a reload replaces it whole
    catalog = served.catalog
    if category is not None and category not in catalog.categories:
        raise InvalidRequest(f"category: unknown {category!r}; known: {', '.join(catalog.categories)}")
    items = catalog.items
    if order == "popular":
        first = [catalog.item_at(catalog.index_of(i)) for i in served.popular_items if i in catalog]
        chosen = {item.item_id for item in first}
        items = first + [item for item in catalog.items if item.item_id not in chosen]
    if category is not None:
        items = [item for item in items if category in item.categories]
    page = items[offset:offset + limit]
    return CatalogPage(
        total=len(items), offset=offset, limit=limit, model_version=served.version,
        categories=list(catalog.categories),
        items=[CatalogItem(item_id=i.item_id, title=i.title, categories=list(i.categories),
                           year=i.year, price=i.price) for i in page])


@router.get("/demo", include_in_schema=False)
async def demo_page() -> FileResponse:
    """The page; ``?user=<id>`` picks the user (default 1)."""
    return _asset(PAGE, media_type="text/html")


@router.get("/demo/static/{name}", include_in_schema=False)
async def demo_asset(name: str) -> FileResponse:
    return _asset(name)


def _asset(name: str, media_type: str | None = None) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise HTTPException(404, f"no such demo asset: {name[:64]!r}")
    return FileResponse(path, media_type=media_type, headers=_NO_CACHE)
