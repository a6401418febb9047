from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from features.events import Event
from gateway.deps import ClientDep, ServiceDep
from gateway.errors import documented

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[ClientDep],
                   responses=documented(401, 413, 422, 503))


class Accepted(BaseModel):
    event_id: str
    topic: str
    partition: int
    offset: int


class EventBatch(BaseModel):
    events: list[Event] = Field(min_length=1, max_length=10_000)


class BatchAccepted(BaseModel):
    accepted: list[Accepted]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def post_event(event: Event, service: ServiceDep) -> Accepted:
    """Validate one behaviour event and produce it to Kafka (202 once the broker acknowledged it).
    Unknown items, timestamps from the future and malformed events get 422; nothing is produced."""
    published = await service.ingest(event)
    return Accepted(**published.__dict__)


@router.post(":batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted)
async def post_events(batch: EventBatch, service: ServiceDep) -> BatchAccepted:
    """Up to the gateway's max_batch_events events; all are validated before any is produced.
    On 503, re-send the batch: events that carry their event_id are applied once however often
    they arrive."""
    published = await service.ingest_many(batch.events)
    return BatchAccepted(accepted=[Accepted(**p.__dict__) for p in published])
