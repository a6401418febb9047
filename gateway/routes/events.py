from __future__ import annotations

from fastapi import APIRouter, status
from pydantic import BaseModel

from features.events import Event
from gateway.deps import ServiceDep

router = APIRouter(prefix="/v1/events", tags=["events"])


class Accepted(BaseModel):
    event_id: str
    topic: str
    partition: int
    offset: int


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
async def post_event(event: Event, service: ServiceDep) -> Accepted:
    """Validate one behaviour event and produce it to Kafka (acknowledged by the broker).
    Unknown items and malformed events get 422 and nothing is produced."""
    published = await service.ingest(event)
    return Accepted(**published.__dict__)
