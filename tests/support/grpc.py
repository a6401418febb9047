"""The gateway's gRPC messages in the REST API's JSON shape, to compare the two front ends."""

from __future__ import annotations

from gateway.proto import recsys_pb2 as pb

SOURCE_NAMES = {pb.SOURCE_MODEL: "model", pb.SOURCE_TRENDING: "trending", pb.SOURCE_POPULAR: "popular"}


def as_dict(response: pb.RecommendResponse) -> dict:
    """The proto response in the shape of ``Recommendations.model_dump()``, which is also the JSON
    body of ``GET /v1/users/{id}/recommendations``."""
    return {
        "request_id": response.request_id,
        "user_id": response.user_id,
        "items": [{"item_id": i.item_id, "title": i.title, "categories": list(i.categories),
                   "score": i.score if i.HasField("score") else None} for i in response.items],
        "cold_start": response.cold_start,
        "degraded": response.degraded,
        "source": SOURCE_NAMES[response.source],
        "model_version": response.model_version,
        "arm": response.arm if response.HasField("arm") else None,
        "features_updated_at_ms": (response.features_updated_at_ms
                                   if response.HasField("features_updated_at_ms") else None),
    }
