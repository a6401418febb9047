"""The gRPC front end (``gateway/proto/recsys.proto``): the REST routes' operations over the same
service layer, so the two front ends cannot disagree. This module only converts proto messages to
and from the service's pydantic models, checks what the REST routes check before the service (the
user id, the bound on k), and maps the service's errors to gRPC status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from pydantic import SecretStr, ValidationError

from features.events import ID_PATTERN, Event, EventType, is_valid_id
from gateway.deps import token_matches
from gateway.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    ItemNotFound,
    NotServed,
    Overloaded,
    PayloadTooLarge,
    RecsysError,
    Unauthorized,
    UpstreamUnavailable,
)
from gateway.producer import Published
from gateway.proto import recsys_pb2 as pb
from gateway.proto import recsys_pb2_grpc as pb_grpc
from gateway.schemas import Recommendations, SimilarItems
from gateway.service import RecommendationService

log = logging.getLogger(__name__)

ServiceGetter = Callable[[], RecommendationService | None]
T = TypeVar("T")

DEFAULT_K = 10  # as the REST route
MAX_K = 100  # the REST route's bound (the service also caps k at the catalog size)
# Trailing metadata key carrying the REST error code ("invalid_request", "unknown_item", ...).
ERROR_CODE_KEY = "recsys-error-code"
# Request metadata key of the client's request id (kept when valid, else a fresh one); the response
# carries the id used in RecommendResponse.request_id.
REQUEST_ID_KEY = "x-request-id"
# Trailing metadata key of an UNAVAILABLE to Ingest/IngestBatch: the event ids the events were sent
# with, comma-separated (the REST 503's details), so that a client retries with them.
EVENT_IDS_KEY = "recsys-event-ids"

# Looked up along the exception's MRO, so subclasses (UnknownItem) map as their parents.
_STATUS: dict[type[RecsysError], grpc.StatusCode] = {
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    NotServed: grpc.StatusCode.UNIMPLEMENTED,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
}

_EVENT_TYPES: dict[int, EventType] = {
    pb.EVENT_TYPE_VIEW: EventType.VIEW,
    pb.EVENT_TYPE_CLICK: EventType.CLICK,
    pb.EVENT_TYPE_CART: EventType.CART,
    pb.EVENT_TYPE_PURCHASE: EventType.PURCHASE,
}
_SOURCES: dict[str, int] = {
    "model": pb.SOURCE_MODEL,
    "trending": pb.SOURCE_TRENDING,
    "popular": pb.SOURCE_POPULAR,
}


def status_for(exc: RecsysError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


# --- proto <-> service models ---------------------------------------------------------------------

def event_from_proto(message: pb.Event, where: str = "event") -> Event:
    """The service's Event from a proto one; InvalidRequest (with the field path) if it is not one.
    An empty event_id gets a fresh one, an unset ts_ms is now, an empty context is none."""
    event_type = _EVENT_TYPES.get(message.event_type)
    if event_type is None:
        name = pb.EventType.Name(message.event_type) if message.event_type in pb.EventType.values() \
            else str(message.event_type)
        raise InvalidRequest(f"{where}.event_type: must be one of "
                             f"{', '.join(pb.EventType.Name(t) for t in _EVENT_TYPES)}, got {name}")
    fields: dict[str, object] = {"user_id": message.user_id, "item_id": message.item_id,
                                 "event_type": event_type}
    if message.event_id:
        fields["event_id"] = message.event_id
    if message.HasField("ts_ms"):
        fields["ts_ms"] = message.ts_ms
    if message.context:
        fields["context"] = dict(message.context)
    try:
        return Event(**fields)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(
            f"{'.'.join([where, *map(str, e['loc'])])}: {e['msg']}" for e in exc.errors())) from None


def check_id(field: str, value: str) -> None:
    """A user or item id of a request message, refused as the REST schema refuses it."""
    if not is_valid_id(value):
        raise InvalidRequest(f"{field}: should match pattern {ID_PATTERN!r}, got {value[:80]!r}")


def client_request_id(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's ``x-request-id`` metadata, if any (validated where the id is used)."""
    return next((value for key, value in context.invocation_metadata() or ()
                 if key == REQUEST_ID_KEY and isinstance(value, str)), None)


def _items_to_proto(items) -> list[pb.RecommendedItem]:
    return [pb.RecommendedItem(item_id=i.item_id, title=i.title, categories=i.categories,
                               score=i.score) for i in items]


def recommendations_to_proto(recs: Recommendations) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        request_id=recs.request_id,
        user_id=recs.user_id,
        items=_items_to_proto(recs.items),
        cold_start=recs.cold_start,
        degraded=recs.degraded,
        source=_SOURCES.get(recs.source, pb.SOURCE_UNSPECIFIED),
        model_version=recs.model_version,
        features_updated_at_ms=recs.features_updated_at_ms,
        arm=recs.arm,
    )


def similar_to_proto(similar: SimilarItems) -> pb.SimilarItemsResponse:
    return pb.SimilarItemsResponse(
        request_id=similar.request_id,
        item_id=similar.item_id,
        items=_items_to_proto(similar.items),
        model_version=similar.model_version,
        source=_SOURCES.get(similar.source, pb.SOURCE_UNSPECIFIED),
        degraded=similar.degraded,
        arm=similar.arm,
    )


def accepted_to_proto(published: Published) -> pb.Accepted:
    return pb.Accepted(event_id=published.event_id, topic=published.topic,
                       partition=published.partition, offset=published.offset)


# --- the servicer ---------------------------------------------------------------------------------

class RecommenderServicer(pb_grpc.RecommenderServicer):
    """Reads the service from ``service_getter`` on every call, so a swapped service is seen."""

    def __init__(self, service_getter: ServiceGetter, api_token: SecretStr | None = None) -> None:
        self._service_getter = service_getter
        self._api_token = api_token  # set: Ingest and IngestBatch need it, as REST's events do

    def _service(self) -> RecommendationService:
        service = self._service_getter()
        if service is None:
            raise UpstreamUnavailable("the gateway is not serving yet")
        return service

    def _check_client(self, context: grpc.aio.ServicerContext) -> None:
        """The REST ``require_client``: metadata ``authorization: Bearer <API token>``."""
        if self._api_token is None:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(presented.strip() or None,
                                                            self._api_token):
            raise Unauthorized("this method needs metadata 'authorization: Bearer <API token>'")

    async def _call(self, context: grpc.aio.ServicerContext, method: str,
                    fn: Callable[[RecommendationService], Awaitable[T]], *,
                    client_auth: bool = False) -> T:
        try:
            if client_auth:
                self._check_client(context)
            return await fn(self._service())
        except RecsysError as exc:
            trailing = [(ERROR_CODE_KEY, exc.code)]
            event_ids = [d["event_id"] for d in exc.details or () if "event_id" in d]
            if event_ids:
                trailing.append((EVENT_IDS_KEY, ",".join(event_ids)))
            await context.abort(status_for(exc), exc.message, trailing_metadata=tuple(trailing))
        except Exception:
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error",
                                trailing_metadata=((ERROR_CODE_KEY, RecsysError.code),))
        raise AssertionError("unreachable: abort() raises")  # pragma: no cover

    async def Recommend(self, request: pb.RecommendRequest,
                        context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        async def recommend(service: RecommendationService) -> pb.RecommendResponse:
            check_id("user_id", request.user_id)
            k = request.k if request.HasField("k") else DEFAULT_K
            bound = min(MAX_K, service.max_k)
            if not 1 <= k <= bound:
                raise InvalidRequest(f"k must be between 1 and {bound}, got {k}")
            max_per_category = (request.max_per_category if request.HasField("max_per_category")
                                else None)
            request_id = client_request_id(context)
            recs = await service.recommend(request.user_id, k, exclude=list(request.exclude),
                                           categories=list(request.categories),
                                           max_per_category=max_per_category,
                                           request_id=request_id)
            return recommendations_to_proto(recs)

        return await self._call(context, "Recommend", recommend)

    async def SimilarItems(self, request: pb.SimilarItemsRequest,
                           context: grpc.aio.ServicerContext) -> pb.SimilarItemsResponse:
        async def similar(service: RecommendationService) -> pb.SimilarItemsResponse:
            check_id("item_id", request.item_id)
            k = request.k if request.HasField("k") else DEFAULT_K
            user_id = request.user_id if request.HasField("user_id") else None
            request_id = client_request_id(context)
            return similar_to_proto(await service.similar(request.item_id, k, user_id=user_id,
                                                          request_id=request_id))

        return await self._call(context, "SimilarItems", similar)

    async def Ingest(self, request: pb.IngestRequest,
                     context: grpc.aio.ServicerContext) -> pb.IngestResponse:
        async def ingest(service: RecommendationService) -> pb.IngestResponse:
            if not request.HasField("event"):
                raise InvalidRequest("event: required")
            published = await service.ingest(event_from_proto(request.event))
            return pb.IngestResponse(accepted=accepted_to_proto(published))

        return await self._call(context, "Ingest", ingest, client_auth=True)

    async def IngestBatch(self, request: pb.IngestBatchRequest,
                          context: grpc.aio.ServicerContext) -> pb.IngestBatchResponse:
        async def ingest_many(service: RecommendationService) -> pb.IngestBatchResponse:
            events = _events_from_proto(request.events, service.policy.max_batch_events)
            published = await service.ingest_many(events)
            return pb.IngestBatchResponse(accepted=[accepted_to_proto(p) for p in published])

        return await self._call(context, "IngestBatch", ingest_many, client_auth=True)


def _events_from_proto(messages: Sequence[pb.Event], max_events: int) -> list[Event]:
    # The service checks the count too; checking it first spares converting a huge batch.
    if not 1 <= len(messages) <= max_events:
        raise InvalidRequest(f"events: between 1 and {max_events} per batch, got {len(messages)}")
    return [event_from_proto(m, f"events[{i}]") for i, m in enumerate(messages)]


# --- the server -----------------------------------------------------------------------------------

async def start_grpc_server(service_getter: ServiceGetter, host: str, port: int, *,
                            max_message_bytes: int | None = None,
                            api_token: SecretStr | None = None) -> tuple[grpc.aio.Server, int]:
    """Serve the Recommender service on ``host:port`` (``port`` -1: a free port) in the running
    event loop; returns the started server (``await server.stop(grace_s)`` to end it) and the port
    it is bound to. ``max_message_bytes`` bounds a request, as the REST body limit does;
    ``api_token``, when set, is required by the ingest methods, as REST requires it."""
    if port < -1 or port == 0 or port > 65535:
        raise ValueError(f"gRPC port must be 1..65535, or -1 for a free one; got {port}")
    options: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]  # a taken port is an error
    if max_message_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_message_bytes))
    server = grpc.aio.server(options=options)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(service_getter, api_token), server)
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
    address = f"{bracketed}:{0 if port == -1 else port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC: cannot bind {address}: {exc}") from exc
    if bound == 0:
        raise RuntimeError(f"gRPC: cannot bind {address}")
    await server.start()
    log.info("gRPC serving recsys.v1.Recommender on %s:%d", host, bound)
    return server, bound
