from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, StringConstraints

from feature_service.store import StoreUnavailable
from features.events import ID_PATTERN
from gateway.catalog_updates import CatalogAccepted, CatalogPublisherDep, ItemUpdateBody
from gateway.deps import AdminDep, ServiceDep
from gateway.errors import UnknownItem, UpstreamUnavailable, documented
from gateway.served_model import load_served_model

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[AdminDep],
                   responses=documented(401, 403, 409, 413, 422, 503))

ItemId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class StockUpdate(BaseModel):
    quantities: dict[ItemId, Annotated[int, Field(ge=0, le=1_000_000_000)]] = Field(
        min_length=1, max_length=10_000, description="item id -> units in stock (0: out of stock)")


class StockState(BaseModel):
    out_of_stock: list[str]


class Reloaded(BaseModel):
    model_version: int
    items: int


@router.put("/stock", response_model=StockState)
async def put_stock(update: StockUpdate, service: ServiceDep) -> StockState:
    """Set stock levels; items at 0 are not recommended (by any gateway sharing the Redis store)."""
    unknown = sorted(set(update.quantities) - {i for i in update.quantities if i in service.served.catalog})
    if unknown:
        raise UnknownItem(f"unknown item_id {unknown[0]!r}: not in the catalog")
    try:
        await asyncio.to_thread(service.inventory.set_quantities, update.quantities)
    except StoreUnavailable as exc:  # Redis down or too slow: the documented 503, not a bare 500
        log.warning("stock update failed: %r", exc)
        raise UpstreamUnavailable("the stock store is unavailable; retry the update (setting the "
                                  "same quantities again is safe)") from None
    return StockState(out_of_stock=sorted(service.inventory.out_of_stock()))


@router.put("/items/{item_id}", response_model=CatalogAccepted, status_code=202)
async def put_item(item_id: Annotated[str, PathParam(pattern=ID_PATTERN)], body: ItemUpdateBody,
                   service: ServiceDep, catalog: CatalogPublisherDep) -> CatalogAccepted:
    """Add or change an item: its whole state goes to the catalog topic (202 once Kafka has it),
    for the next refresh or cold-item run; a ``stock`` in it applies at once, as PUT /stock."""
    update = body.for_item(item_id)
    partition, offset = await catalog.publish(update)
    if update.stock is not None:
        # After the topic took it: the inventory never holds a stock level the catalog lacks. A new
        # item's level is kept too (PUT /stock refuses it), so it is right when the item arrives.
        try:
            await asyncio.to_thread(service.inventory.set_quantities, {item_id: update.stock})
        except StoreUnavailable as exc:
            log.warning("stock of catalog update %s failed: %r", item_id, exc)
            raise UpstreamUnavailable("the update is on the catalog topic, but the stock store is "
                                      "unavailable; repeat the same PUT (a repeat is harmless)") from None
    return CatalogAccepted(item_id=item_id, in_catalog=item_id in service.served.catalog,
                           topic=catalog.topic, partition=partition, offset=offset)


@router.get("/stock", response_model=StockState)
async def get_stock(service: ServiceDep) -> StockState:
    return StockState(out_of_stock=sorted(service.inventory.out_of_stock()))


@router.post("/reload", response_model=Reloaded)
async def reload_model(service: ServiceDep, request: Request) -> Reloaded:
    """Re-read the live version's catalog now (the gateway also notices a new live version by
    itself within RECSYS_GATEWAY_MODEL_POLL_MS)."""
    served = await asyncio.to_thread(load_served_model, Path(request.app.state.settings.model_repository))
    # A running experiment's arms stay while the live version does (the watcher moves them with
    # the rollout pointer); a new live version starts without them until the watcher's next look.
    service.reload(served, service.arms if served.version == service.served.version else None)
    return Reloaded(model_version=served.version, items=served.catalog.num_items)
