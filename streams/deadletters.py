"""Dead letters: what the rank worker could not apply, with where it came from and why.

``reason_code`` is the short label a dead letter is counted under in the metrics.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.engine import SourcedEvent
from streams.codec import encode_event


def reason_code(reason: str) -> str:
    """A short label for a dead-letter reason (the metric label; the full reason goes in the record).

    >>> reason_code("field 'ts' must be a finite number of seconds, got 'x'")
    'wrong_type'
    """
    for prefix, code in (("not valid JSON", "invalid_json"), ("event must be", "not_an_object"),
                         ("timestamp out of range", "bad_timestamp"),
                         ("missing required", "missing_field"), ("unknown event type", "unknown_type"),
                         ("unknown scene", "unknown_scene"), ("stored state", "state_unreadable"),
                         ("processing error", "processing_error")):
        if reason.startswith(prefix):
            return code
    return "wrong_type" if "must be" in reason else "bad_value"


@dataclass(slots=True)
class DeadLetter:
    raw: bytes
    reason: str
    topic: str
    partition: int
    offset: int
    index: int | None = None  # the event's place in its message; None: the record is the whole message

    @classmethod
    def of(cls, sourced: SourcedEvent, reason: str, topic: str) -> "DeadLetter":
        return cls(encode_event(sourced.event), reason, topic, sourced.partition, sourced.offset,
                   sourced.index)
