"""streams/codec.py under generated input (hypothesis): whatever comes, a valid Event or a BadEvent.

The worker turns every ``BadEvent`` into a dead letter; any other exception would stop it. So: any
bytes decode to an event that passes every check, or raise ``BadEvent`` with a reason; valid
events round-trip; the one-go check and the field-by-field one agree; and dead-letter records are
JSON, say where the value came from, and stay within their size cap. Derandomized with bounded
examples, so CI sees the same cases every run in a few seconds.
"""
import base64
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import EVENT_TYPES, Event
from streams.codec import (DEADLETTER_REASON_MAX_CHARS, DEADLETTER_RECORD_MAX_BYTES,
                           DEADLETTER_VALUE_MAX_BYTES, MAX_ID_BYTES, MAX_TS, BadEvent, _checked, decode_event,
                           encode_deadletter, encode_event, ts_limit)

SCENES = ("default", "search", "product")
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# JSON values of every kind, nested; integers stay within what orjson writes (64 bits)
json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20)
                | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.text(min_size=1, max_size=12) | st.sampled_from(["", "x" * MAX_ID_BYTES, "x" * (MAX_ID_BYTES + 1)])
stamps = (st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**63, 2**64 - 1)
          | st.sampled_from([0, -0.0, MAX_TS, MAX_TS + 1, 1e300, -1e-300, 1.7e12, 1_700_000_000.5]))
sent_stamps = st.none() | st.sampled_from([-0.001, 0.0]) | st.floats(0, 5e9)
max_futures = st.sampled_from([0.0, 86_400.0]) | st.floats(0, 1e10)


def field_value(valid):
    """A field's value: mostly one that fits, sometimes any JSON value, sometimes left out."""
    return st.one_of(valid, json_values, st.just(KeyError))


@st.composite
def documents(draw):
    """Dicts close to events: each field valid, wrong, or missing, plus unknown fields."""
    doc = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    for name, valid in (("user_id", ids), ("item_id", ids),
                        ("type", st.sampled_from(EVENT_TYPES + ("VIEW", ""))), ("ts", stamps),
                        ("scene", st.sampled_from(SCENES + ("home", "", None))),
                        ("event_id", st.none() | ids)):
        value = draw(field_value(valid))
        if value is not KeyError:
            doc[name] = value
    return doc


def outcome(decode):
    """The Event, or the reason; anything else the codec raises fails the test."""
    try:
        event = decode()
    except BadEvent as exc:
        assert str(exc), "a dead-letter reason must say something"
        return str(exc)
    assert isinstance(event, Event)
    return event


def assert_valid(event, sent_ts, max_future_s):
    """Everything the engine relies on about an accepted event."""
    for name in ("user_id", "item_id"):
        value = getattr(event, name)
        assert isinstance(value, str) and 0 < len(value) <= MAX_ID_BYTES
        value.encode()  # keys and Redis fields: encodable, no lone surrogates
    assert event.type in EVENT_TYPES and event.scene in SCENES
    assert isinstance(event.ts, float) and math.isfinite(event.ts)
    assert 0 <= event.ts <= ts_limit(sent_ts, max_future_s) <= MAX_TS
    assert event.event_id is None or (isinstance(event.event_id, str) and len(event.event_id) <= MAX_ID_BYTES)


raw_values = (st.binary(max_size=300)
              | json_values.map(orjson.dumps)
              | documents().map(orjson.dumps)
              | st.tuples(documents().map(orjson.dumps), st.integers(0, 300)).map(lambda t: t[0][:t[1]])
              | st.tuples(documents().map(orjson.dumps), st.integers(0, 300), st.integers(0, 255))
              .map(lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:])
              | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))


@PROPERTY
@given(raw=raw_values, sent_ts=sent_stamps, max_future_s=max_futures)
def test_any_bytes_decode_to_a_valid_event_or_a_reason(raw, sent_ts, max_future_s):
    result = outcome(lambda: decode_event(raw, SCENES, sent_ts, max_future_s))
    if isinstance(result, Event):
        assert_valid(result, sent_ts, max_future_s)


@PROPERTY
@given(doc=documents(), sent_ts=sent_stamps, max_future_s=max_futures)
def test_the_quick_path_and_the_field_checks_agree(doc, sent_ts, max_future_s):
    quick = outcome(lambda: decode_event(orjson.dumps(doc), SCENES, sent_ts, max_future_s))
    checked = outcome(lambda: _checked(doc, SCENES, sent_ts, max_future_s))
    assert quick == checked
    if isinstance(quick, Event):
        assert_valid(quick, sent_ts, max_future_s)


valid_ids = st.text(min_size=1, max_size=MAX_ID_BYTES)
events = st.builds(Event, user_id=valid_ids, item_id=valid_ids, type=st.sampled_from(EVENT_TYPES),
                   ts=st.floats(0, MAX_TS) | st.integers(0, int(MAX_TS)).map(float),
                   scene=st.sampled_from(SCENES), event_id=st.none() | st.text(max_size=MAX_ID_BYTES))


@PROPERTY
@given(event=events, ahead=st.none() | st.floats(0, 1e6))
def test_valid_events_round_trip(event, ahead):
    sent_ts = None if ahead is None else event.ts + ahead  # a record sent at or after the event
    assert decode_event(encode_event(event), SCENES, sent_ts) == event


@PROPERTY
@given(event=events, sent_ts=st.floats(1.0, MAX_TS), max_future_s=max_futures)
def test_events_beyond_the_records_timestamp_are_refused_with_a_reason(event, sent_ts, max_future_s):
    result = outcome(lambda: decode_event(encode_event(event), SCENES, sent_ts, max_future_s))
    if event.ts > sent_ts + max_future_s:
        assert isinstance(result, str) and result.startswith("timestamp out of range")
    else:
        assert result == event


topics = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=249)
# values and reasons up to several times the caps: a short piece repeated, so generating stays cheap
long_bytes = st.tuples(st.binary(min_size=1, max_size=6), st.integers(0, 60_000)).map(lambda t: t[0] * t[1])
long_texts = st.tuples(st.text(min_size=1, max_size=4), st.integers(1, 3_000)).map(lambda t: t[0] * t[1])


@PROPERTY
@given(raw=st.none() | st.binary(max_size=200) | long_bytes,
       reason=st.text(min_size=1, max_size=50) | long_texts, topic=topics,
       partition=st.integers(0, 2**31 - 1), offset=st.integers(0, 2**63 - 1))
def test_deadletter_records_are_json_with_where_and_why_within_the_cap(raw, reason, topic, partition, offset):
    record = encode_deadletter(raw, reason, topic, partition, offset)
    assert len(record) <= DEADLETTER_RECORD_MAX_BYTES
    doc = orjson.loads(record)
    assert (doc["topic"], doc["partition"], doc["offset"]) == (topic, partition, offset)
    assert doc["reason"] and len(doc["reason"]) <= DEADLETTER_REASON_MAX_CHARS
    assert reason.startswith(doc["reason"].removesuffix("...")) and (doc["reason"] == reason) == (
        len(reason) <= DEADLETTER_REASON_MAX_CHARS)
    raw = raw or b""
    kept = doc["value"].encode() if "value" in doc else base64.b64decode(doc["value_base64"])
    assert doc["value_bytes"] == len(raw) and raw.startswith(kept)
    assert doc["value_truncated"] == (len(raw) > DEADLETTER_VALUE_MAX_BYTES)
    assert len(kept) >= min(len(raw), DEADLETTER_VALUE_MAX_BYTES) - 3  # a cut character at most
