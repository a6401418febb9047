"""Create the events and dead-letter topics with a chosen partition count (idempotent)."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient

_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int,
                  timeout_s: float = 30, configs: dict[str, str] | None = None) -> None:
    """Create topics (replication factor 1, topic ``configs`` such as cleanup.policy) and wait
    until every partition has a leader. Topics that already exist are left as they are, whatever
    their partition count or configs."""
    names = list(names)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers,
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        result = admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}
             for name in names},
            raise_errors=False,
        )
        errors = [
            f"{t['name']}: error {t['error_code']} {t.get('error_message') or ''}".strip()
            for t in result["topics"]
            if t["error_code"] not in (0, _TOPIC_ALREADY_EXISTS)
        ]
        if errors:
            raise RuntimeError("creating Kafka topics failed: " + "; ".join(errors))
        admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
