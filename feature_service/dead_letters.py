"""Dead-letter records: why a message was refused, where it came from, and a bounded prefix of its
bytes with their size and digest, so that a record always fits the producer's message limit."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

DEFAULT_PAYLOAD_MAX_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024  # dead-letter keys longer than this are cut (the record says so)
MAX_REASON_CHARS = 4096


def _text_prefix(raw: bytes, truncated: bool) -> str | None:
    """``raw`` as text, or None when it is not UTF-8. A cut prefix may end inside a character: the
    incomplete tail (at most 3 bytes) is dropped."""
    for cut in range(4 if truncated else 1):
        try:
            return raw[:len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The dead-letter record's key: the message's, cut to ``MAX_KEY_BYTES``."""
    return key if key is None or len(key) <= MAX_KEY_BYTES else key[:MAX_KEY_BYTES]


def dead_letter_record(raw: bytes | None, reason: str, topic: str, partition: int, offset: int, *,
                       max_payload_bytes: int = DEFAULT_PAYLOAD_MAX_BYTES,
                       key: bytes | None = None) -> bytes:
    """The dead-letter value: the reason, where the message came from, the message's size and
    SHA-256, and its bytes, at most ``max_payload_bytes`` of them (``payload_truncated`` says so):
    a whole oversized message, escaped, could exceed the producer's limit and never be written."""
    raw = raw or b""
    kept = raw[:max_payload_bytes]
    truncated = len(kept) < len(raw)
    record: dict[str, object] = {
        "reason": reason[:MAX_REASON_CHARS],
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "dead_lettered_at_ms": int(time.time() * 1000),
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
        "payload_truncated": truncated,
    }
    text = _text_prefix(kept, truncated)
    if text is not None:
        record["payload"] = text
    else:
        record["payload_base64"] = base64.b64encode(kept).decode()
    if key is not None and len(key) > MAX_KEY_BYTES:
        record["key_bytes"] = len(key)
        record["key_sha256"] = hashlib.sha256(key).hexdigest()
    return json.dumps(record).encode()


def write_dead_letters(producer: KafkaProducer, topic: str, invalid: list, *, max_payload_bytes: int,
                       timeout_s: float) -> tuple[int, dict[TopicPartition, KafkaError]]:
    """Write a dead letter for each (message, reason) of ``invalid``; return how many were written
    and the partitions of those that were not, with an error (those are written again when their
    partition is re-delivered). After a send that fails at once (no topic metadata: it blocked for
    the whole timeout), the rest are not tried."""
    futures: list = []
    failed: dict[TopicPartition, KafkaError] = {}
    for message, reason in invalid:
        tp = TopicPartition(message.topic, message.partition)
        if failed:
            failed.setdefault(tp, next(iter(failed.values())))
            continue
        value = dead_letter_record(message.value, reason, message.topic, message.partition,
                                   message.offset, key=message.key, max_payload_bytes=max_payload_bytes)
        try:
            futures.append((tp, producer.send(topic, key=dead_letter_key(message.key), value=value)))
        except KafkaError as exc:
            failed[tp] = exc
            continue
        log.info("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
    if futures:
        try:
            producer.flush(timeout=timeout_s)
        except KafkaError as exc:  # the futures not done yet say so below
            log.warning("flushing dead letters failed: %r", exc)
    written: list[TopicPartition] = []
    for tp, future in futures:
        try:
            future.get(timeout=0)  # raises the send's error, if any
            written.append(tp)
        except KafkaError as exc:
            failed.setdefault(tp, exc)
    return sum(tp not in failed for tp in written), failed

