"""Wire formats: orjson decoding and validation of events, encoding of every output message.

Schemas are the ones in the README ("Message formats"). A bad event raises ``BadEvent`` with a
reason a person can act on; the agent turns it into a dead-letter record.
"""
from __future__ import annotations

import base64
import math
import time

import orjson

from models.engine import Feedback, Recommendation
from models.events import DEFAULT_SCENE, EVENT_TYPES, Event
from models.state import MAX_MESSAGE_EVENTS

MAX_ID_BYTES = 512
_TYPES = frozenset(EVENT_TYPES)
# Event times are Unix seconds in [0, MAX_TS]. 0 stays valid: logs with order only (Amazon Beauty)
# replay synthetic ts = 0, 1, 2, ..., and MovieLens has 1997. MAX_TS (2100-01-01) catches
# milliseconds or nanoseconds sent as seconds and values such as 1e300.
MAX_TS = 4_102_444_800.0
# How far an event's ts may lie after its Kafka record's own timestamp (ATTNFLOW_MAX_FUTURE_S): one
# event a year ahead would make every other event in that user's history look a year old.
MAX_FUTURE_S = 86_400.0


class BadEvent(ValueError):
    """An event that cannot be applied; ``str(exc)`` is the dead-letter reason."""


def _text(doc: dict, name: str, required: bool) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise BadEvent(f"missing required field {name!r}")
        return None
    if not isinstance(value, str):
        raise BadEvent(f"field {name!r} must be a string, got {type(value).__name__}")
    if required and not value:
        raise BadEvent(f"field {name!r} is empty")
    if len(value) > MAX_ID_BYTES:
        raise BadEvent(f"field {name!r} is longer than {MAX_ID_BYTES} characters")
    return value


def ts_limit(sent_ts: float | None, max_future_s: float = MAX_FUTURE_S) -> float:
    """The latest ``ts`` accepted for an event whose Kafka record carries ``sent_ts`` (seconds).

    A record without a timestamp (None, or Kafka's -1) leaves only the absolute bound.

    >>> ts_limit(1_700_000_000.0), ts_limit(None) == ts_limit(-0.001) == MAX_TS
    (1700086400.0, True)
    """
    if sent_ts is None or not sent_ts > 0:
        return MAX_TS
    return min(MAX_TS, sent_ts + max_future_s)


def _short(value) -> str:
    """``repr(value)``, cut to a length that a dead-letter reason can carry."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def decode_event(raw: bytes, scenes: tuple[str, ...], sent_ts: float | None = None,
                 max_future_s: float = MAX_FUTURE_S) -> Event:
    """Parse and validate one event; unknown fields are ignored.

    ``sent_ts`` is the Kafka record's timestamp (seconds): ``ts`` may be at most ``max_future_s``
    after it (and never after ``MAX_TS``, nor before 0), see :func:`ts_limit`.

    >>> decode_event(b'{"user_id":"u","item_id":"i","type":"cart","ts":1.5,"extra":1}', ("default",))
    Event(user_id='u', item_id='i', type='cart', ts=1.5, scene='default', event_id=None)
    >>> decode_event(b'{"user_id":"u","item_id":7,"type":"cart","ts":1}', ("default",))
    Traceback (most recent call last):
    ...
    streams.codec.BadEvent: field 'item_id' must be a string, got int
    >>> decode_event(b'{"user_id":"u","item_id":"i","type":"cart","ts":1e300}', ("default",))
    Traceback (most recent call last):
    ...
    streams.codec.BadEvent: timestamp out of range: ts=1e+300 is after 2100-01-01; milliseconds, not seconds?
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    return _event_of(doc, scenes, sent_ts, max_future_s)


def _event_of(doc, scenes: tuple[str, ...], sent_ts: float | None, max_future_s: float) -> Event:
    """One parsed event document validated (:func:`decode_event`)."""
    if type(doc) is dict:  # the common case, checked in one go; anything unusual takes the path below
        user_id, item_id, etype, ts = doc.get("user_id"), doc.get("item_id"), doc.get("type"), doc.get("ts")
        scene, event_id = doc.get("scene"), doc.get("event_id")
        if scene is None or scene == "":
            scene = DEFAULT_SCENE
        if (type(user_id) is str and type(item_id) is str and 0 < len(user_id) <= MAX_ID_BYTES
                and 0 < len(item_id) <= MAX_ID_BYTES and type(etype) is str and etype in _TYPES
                and type(ts) in (float, int)
                and 0 <= ts <= ts_limit(sent_ts, max_future_s) and scene in scenes
                and (event_id is None or (type(event_id) is str and len(event_id) <= MAX_ID_BYTES))):
            return Event(user_id, item_id, etype, float(ts), scene, event_id)
    return _checked(doc, scenes, sent_ts, max_future_s)


def decode_events(raw: bytes, scenes: tuple[str, ...], sent_ts: float | None = None,
                  max_future_s: float = MAX_FUTURE_S) -> tuple[list[tuple[int, Event]],
                                                               list[tuple[int, bytes, str]]]:
    """A message holding one event (a JSON object) or many (a JSON array of them), validated one by one.

    Returns ``(events, bad)``: ``(index, event)`` of the good ones, in message order, and ``(index, raw,
    reason)`` of each bad one, ``raw`` being that event's own JSON, so that a bad event in a batch is
    dead-lettered alone and its neighbours apply. A single-event message is index 0. A message that
    cannot be read at all (not JSON, an empty or oversized array) raises ``BadEvent``: it goes whole.

    >>> good, bad = decode_events(b'[{"user_id":"u","item_id":"i","type":"view","ts":1},{"user_id":"u"}]',
    ...                           ("default",))
    >>> [(i, e.item_id) for i, e in good], bad
    ([(0, 'i')], [(1, b'{"user_id":"u"}', "missing required field 'item_id'")])
    >>> decode_events(b'{"user_id":"u","item_id":"i","type":"view","ts":1}', ("default",))[0][0][0]
    0
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    if type(doc) is not list:
        return [(0, _event_of(doc, scenes, sent_ts, max_future_s))], []
    if not doc:
        raise BadEvent("batched message is an empty array: send at least one event")
    if len(doc) > MAX_MESSAGE_EVENTS:
        raise BadEvent(f"batched message holds {len(doc)} events, at most {MAX_MESSAGE_EVENTS}")
    good, bad = [], []
    for index, element in enumerate(doc):
        try:
            good.append((index, _event_of(element, scenes, sent_ts, max_future_s)))
        except BadEvent as exc:
            bad.append((index, _element_json(element, raw), str(exc)))
    return good, bad


def _element_json(element, raw: bytes) -> bytes:
    """One element of a batched message as JSON for its dead letter; the whole message where orjson
    cannot write it back (arrays nested deeper than the 255 levels it writes, though it reads 1024).

    >>> _element_json([[[1]]], b"[[[[1]]]]"), len(_element_json(orjson.loads(b"[" * 300 + b"]" * 300), b"x"))
    (b'[[[1]]]', 1)
    """
    try:
        return orjson.dumps(element)
    except TypeError:
        return raw


def _timestamp(doc: dict, sent_ts: float | None, max_future_s: float) -> float:
    """``doc["ts"]`` checked against the bounds of :func:`decode_event`; an int of any size is fine."""
    ts = doc.get("ts")
    if ts is None:
        raise BadEvent("missing required field 'ts'")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts != ts or ts in (math.inf, -math.inf):
        raise BadEvent(f"field 'ts' must be a finite number of seconds, got {_short(ts)}")
    if ts < 0:
        raise BadEvent(f"timestamp out of range: ts={_short(ts)} is before 1970 (Unix seconds expected)")
    if ts > MAX_TS:
        raise BadEvent(f"timestamp out of range: ts={_short(ts)} is after 2100-01-01; "
                       "milliseconds, not seconds?")
    limit = ts_limit(sent_ts, max_future_s)
    if ts > limit:
        raise BadEvent(f"timestamp out of range: ts={_short(ts)} is {ts - sent_ts:.0f} s after its Kafka "
                       f"record's timestamp {sent_ts:.3f} "
                       f"(at most {max_future_s:g} s: ATTNFLOW_MAX_FUTURE_S)")
    return float(ts)


def _checked(doc, scenes: tuple[str, ...], sent_ts: float | None = None,
             max_future_s: float = MAX_FUTURE_S) -> Event:
    """Field by field, so that a bad event gets the reason that fits it."""
    if not isinstance(doc, dict):
        raise BadEvent(f"event must be a JSON object, got {type(doc).__name__}")
    user_id = _text(doc, "user_id", True)
    item_id = _text(doc, "item_id", True)
    etype = _text(doc, "type", True)
    if etype not in EVENT_TYPES:
        raise BadEvent(f"unknown event type {etype!r}; expected one of {', '.join(EVENT_TYPES)}")
    ts = _timestamp(doc, sent_ts, max_future_s)
    scene = _text(doc, "scene", False) or DEFAULT_SCENE
    if scene not in scenes:
        raise BadEvent(f"unknown scene {scene!r}; configured scenes: {', '.join(scenes)} (ATTNFLOW_SCENES)")
    return Event(user_id=user_id, item_id=item_id, type=etype, ts=ts, scene=scene,
                 event_id=_text(doc, "event_id", False))


CATALOGUE_ACTIONS = ("add", "update", "hide")


def decode_catalogue(raw: bytes, scenes: tuple[str, ...]) -> tuple[str, int]:
    """``(item_id, scene mask)`` of one catalogue message; ``BadEvent`` with the reason otherwise.

    ``{"item_id", "action": "add"|"update"|"hide", "scenes": [...]}``: add and update put the item in
    exactly the listed scenes (every scene when ``scenes`` is left out); hide takes it out of all of them.

    >>> decode_catalogue(b'{"item_id":"i","action":"add","scenes":["search"]}', ("default", "search"))
    ('i', 2)
    >>> decode_catalogue(b'{"item_id":"i","action":"hide"}', ("default",))
    ('i', 0)
    >>> decode_catalogue(b'{"item_id":"i","scenes":["shop"]}', ("default",))
    Traceback (most recent call last):
    ...
    streams.codec.BadEvent: unknown scene 'shop'; configured scenes: default (ATTNFLOW_SCENES)
    """
    from models.catalogue import scene_mask

    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadEvent(f"catalogue message must be a JSON object, got {type(doc).__name__}")
    item_id = _text(doc, "item_id", True)
    action = _text(doc, "action", False) or "update"
    if action not in CATALOGUE_ACTIONS:
        raise BadEvent(f"unknown catalogue action {action!r}; expected one of {', '.join(CATALOGUE_ACTIONS)}")
    if action == "hide":
        return item_id, 0
    listed = doc.get("scenes")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
            raise BadEvent(f"field 'scenes' must be a list of scene names, got {_short(listed)}")
        if not listed:
            raise BadEvent("field 'scenes' is empty: use action 'hide' to take an item out of every scene")
    try:
        return item_id, scene_mask(listed, scenes)
    except KeyError as exc:
        raise BadEvent(f"unknown scene {exc.args[0]!r}; configured scenes: {', '.join(scenes)} "
                       "(ATTNFLOW_SCENES)") from None


def encode_catalogue(item_id: str, action: str = "update", scenes: list[str] | None = None) -> bytes:
    """The producer side of :func:`decode_catalogue`."""
    doc = {"item_id": item_id, "action": action}
    if scenes is not None:
        doc["scenes"] = list(scenes)
    return orjson.dumps(doc)


def decode_campaign(raw: bytes, scenes: tuple[str, ...]):
    """``(action, Campaign | campaign id)`` of one ``campaigns`` message (``models.market.campaigns``);
    ``BadEvent`` with the reason otherwise.

    >>> decode_campaign(b'{"campaign_id":"c1","action":"pause"}', ("default",))
    ('pause', 'c1')
    >>> decode_campaign(b'{"campaign_id":"c1","advertiser":"a","items":[],"bid":1,"daily_budget":9}',
    ...                 ("default",))
    Traceback (most recent call last):
    ...
    streams.codec.BadEvent: field 'items' is empty: a campaign promotes at least one item
    """
    from models.market.campaigns import CampaignError, campaign_from_doc

    try:
        return campaign_from_doc(orjson.loads(raw), scenes)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not valid JSON: {exc}") from None
    except CampaignError as exc:
        raise BadEvent(str(exc)) from None


def encode_campaign(campaign, scenes: tuple[str, ...]) -> bytes:
    """The producer side of :func:`decode_campaign` (also how the store keeps a campaign)."""
    return orjson.dumps(campaign.to_doc(scenes))


def encode_ledger(entry: bytes) -> tuple[bytes, bytes]:
    """``(key, value)`` of a ``ledger`` record from a store ledger entry
    (``b"<charged micros>:<charge JSON>"``, ``models.market.book``): the charge with what was actually
    charged, keyed by its charge id.

    >>> key, value = encode_ledger(b'7:{"charge_id":"ab","price_micros":9}')
    >>> key, orjson.loads(value)["amount"], orjson.loads(value)["capped"]
    (b'ab', 7e-06, True)
    """
    amount, _, body = entry.partition(b":")
    doc = orjson.loads(body)
    micros = int(amount)
    doc.update(amount_micros=micros, amount=micros / 1_000_000, capped=micros < doc["price_micros"])
    return doc["charge_id"].encode(), orjson.dumps(doc)


def encode_event(event: Event) -> bytes:
    """The producer side of :func:`decode_event`.

    >>> decode_event(encode_event(Event("u", "i", "view", 2.0, "search")), ("default", "search")).scene
    'search'
    """
    return orjson.dumps(_event_doc(event))


def _event_doc(event: Event) -> dict:
    doc = {"user_id": event.user_id, "item_id": event.item_id, "type": event.type, "ts": event.ts,
           "scene": event.scene}
    if event.event_id is not None:
        doc["event_id"] = event.event_id
    return doc


def encode_events(events) -> bytes:
    """One batched message of ``events`` (a JSON array; :func:`decode_events` reads it back).

    Every event of a message must belong to users of one partition: the producer keys the message
    by one of them (``streams.replay``), and each user's events must stay on that user's partition.

    >>> two = encode_events([Event("u", "i", "view", 1.0)] * 2)
    >>> [e.user_id for _, e in decode_events(two, ("default",))[0]]
    ['u', 'u']
    """
    return orjson.dumps([_event_doc(event) for event in events])


def encode_recommendation(rec: Recommendation, emitted_ts: float | None = None) -> bytes:
    doc = {"user_id": rec.user_id, "scene": rec.scene, "items": rec.items, "scores": rec.scores,
           "model_version": rec.model_version, "event_ts": rec.event_ts,
           "emitted_ts": time.time() if emitted_ts is None else emitted_ts}
    if rec.explanation is not None:
        doc["explanation"] = rec.explanation
    if rec.sponsored is not None:  # the attention market: rank, item, campaign id and click price of each
        doc["sponsored"] = rec.sponsored
    return orjson.dumps(doc)


def encode_feedback(fb: Feedback) -> bytes:
    return orjson.dumps({"user_id": fb.user_id, "item_id": fb.item_id, "type": fb.type, "scene": fb.scene,
                         "ts": fb.ts, "hit": fb.hit, "rank": fb.rank, "list_age_s": fb.list_age_s,
                         "list_scene": fb.list_scene, "event_id": fb.event_id})


DEADLETTER_VALUE_MAX_BYTES = 64 * 1024
DEADLETTER_REASON_MAX_CHARS = 1000
# What a dead-letter record can grow to: JSON escapes a character to at most six bytes, and a topic name
# has at most 249 characters; well inside the broker's default message limit of 1 MiB.
DEADLETTER_RECORD_MAX_BYTES = 512 * 1024


def _as_text(value: bytes, cut: bool) -> str | None:
    """``value`` as UTF-8 text, or None; a cut value may end inside a character, whose bytes are dropped.

    >>> _as_text("aé".encode()[:2], cut=True), _as_text(b"\\xff", cut=False)
    ('a', None)
    """
    for drop in range(4 if cut else 1):
        try:
            return value[:len(value) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def encode_deadletter(raw: bytes | None, reason: str, topic: str, partition: int, offset: int,
                      index: int | None = None) -> bytes:
    """Dead-letter record: the original bytes (as text when UTF-8, else base64) and why it was refused.

    A value is carried up to ``DEADLETTER_VALUE_MAX_BYTES``; a longer one is cut to a prefix
    (``value_truncated``), since whole it may not fit in a Kafka message once encoded: base64 grows it
    by a third and JSON escapes a control byte to six. ``value_bytes`` is its full length, and
    ``topic``/``partition``/``offset`` say where the whole value still is; ``index`` is the event's
    place in a batched message (its own JSON is the value), null when the record is the whole message.
    A reason (which may quote an exception) is cut to ``DEADLETTER_REASON_MAX_CHARS``, so a record stays
    within ``DEADLETTER_RECORD_MAX_BYTES`` whatever it is given.

    >>> orjson.loads(encode_deadletter(b'{bad', "not valid JSON", "events", 2, 41))["value"]
    '{bad'
    >>> doc = orjson.loads(encode_deadletter(("x" + "é" * 40_000).encode(), "not valid JSON", "events", 0, 7))
    >>> (doc["value_bytes"], doc["value_truncated"],
    ...  len(doc["value"].encode()) == DEADLETTER_VALUE_MAX_BYTES - 1)
    (80001, True, True)
    """
    raw = raw or b""
    kept = raw[:DEADLETTER_VALUE_MAX_BYTES]
    if len(reason) > DEADLETTER_REASON_MAX_CHARS:
        reason = reason[:DEADLETTER_REASON_MAX_CHARS - 3] + "..."
    doc = {"reason": reason, "topic": topic, "partition": partition, "offset": offset, "index": index,
           "failed_ts": time.time(), "value_bytes": len(raw), "value_truncated": len(kept) < len(raw)}
    text = _as_text(kept, cut=doc["value_truncated"])
    if text is not None:
        doc["value"] = text
    else:
        doc["value_base64"] = base64.b64encode(kept).decode("ascii")
    return orjson.dumps(doc)
