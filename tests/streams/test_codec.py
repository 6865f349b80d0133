"""streams/codec.py: validation reasons, round trips, dead-letter records."""
import base64

import orjson
import pytest

from models.events import Event
from streams.codec import BadEvent, decode_event, encode_deadletter, encode_event
from streams.settings import Settings

SCENES = ("default", "search")


@pytest.mark.parametrize("raw, reason", [
    (b"{", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"item_id": "i", "type": "view", "ts": 1}', "missing required field 'user_id'"),
    (b'{"user_id": "", "item_id": "i", "type": "view", "ts": 1}', "field 'user_id' is empty"),
    (b'{"user_id": 5, "item_id": "i", "type": "view", "ts": 1}', "'user_id' must be a string, got int"),
    (b'{"user_id": "u", "item_id": "i", "type": "view"}', "missing required field 'ts'"),
    (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": true}', "'ts' must be a finite number"),
    (b'{"user_id": "u", "item_id": "i", "type": "VIEW", "ts": 1}', "unknown event type 'VIEW'"),
    (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": 1, "scene": 3}', "'scene' must be a string"),
    (b'{"user_id": "u", "item_id": "i", "type": "view", "ts": 1, "scene": "home"}', "unknown scene 'home'"),
])
def test_bad_events_have_a_reason(raw, reason):
    with pytest.raises(BadEvent, match=reason.replace("(", r"\(").replace("[", r"\[")):
        decode_event(raw, SCENES)


def test_round_trip_keeps_fields_and_ignores_unknown_ones():
    event = Event("u1", "sku-9", "purchase", 1700000000.25, "search", "e-1")
    assert decode_event(encode_event(event), SCENES) == event
    doc = orjson.loads(encode_event(event))
    doc["campaign"] = {"id": 3}
    assert decode_event(orjson.dumps(doc), SCENES) == event


def test_integer_timestamps_and_default_scene():
    event = decode_event(b'{"user_id":"u","item_id":"i","type":"click","ts":1700000000}', SCENES)
    assert event.ts == 1700000000.0 and isinstance(event.ts, float) and event.scene == "default"


def test_deadletter_keeps_binary_values():
    raw = b"\xff\xfe binary"
    record = orjson.loads(encode_deadletter(raw, "not valid JSON", "events", 1, 9))
    assert base64.b64decode(record["value_base64"]) == raw
    assert (record["reason"], record["partition"], record["offset"]) == ("not valid JSON", 1, 9)


def test_settings_reject_bad_configuration():
    with pytest.raises(ValueError, match="scenes must start with 'default'"):
        Settings.from_env({"ATTNFLOW_SCENES": "home,search"})
    with pytest.raises(ValueError, match="mask_types has unknown event types"):
        Settings.from_env({"ATTNFLOW_MASK_TYPES": "like"})
    with pytest.raises(ValueError, match="TRAIN_NICE=20"):
        Settings.from_env({"ATTNFLOW_TRAIN_NICE": "20"})
    assert Settings.from_env({"ATTNFLOW_SCENES": "default, home"}).scenes == ("default", "home")
    assert Settings.from_env(Settings().as_env()) == Settings()



def test_quick_path_accepts_exactly_what_the_field_checks_accept():
    """``decode_event`` checks the common case in one go; every answer must
    match the field-by-field checks."""
    import itertools

    from streams.codec import MAX_ID_BYTES, _checked

    ids = ["u", "", "x" * MAX_ID_BYTES, "x" * (MAX_ID_BYTES + 1), 5, None, ["u"], True]
    types = ["view", "VIEW", "", 1, None, ["view"], {"a": 1}]
    stamps = [1.5, 17, 0, -2.0, True, "1", None, 1e308]
    scenes = [None, "", "search", "home", 0, False, [], 3.0]
    event_ids = [None, "e", "", 7, "e" * (MAX_ID_BYTES + 1)]
    cases = 0
    for user, item, etype, ts, scene, event_id in itertools.product(ids, ids[:3] + [5], types, stamps, scenes,
                                                                     event_ids):
        doc = {"user_id": user, "item_id": item, "type": etype, "ts": ts, "scene": scene,
               "event_id": event_id}
        doc = {k: v for k, v in doc.items() if v is not None or k == "scene"}
        outcomes = []
        for decode in (lambda: decode_event(orjson.dumps(doc), SCENES), lambda: _checked(doc, SCENES)):
            try:
                outcomes.append(decode())
            except BadEvent as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], doc
        cases += 1
    assert cases > 10_000


@pytest.mark.parametrize("ts, sent_ts, reason", [
    (-1.0, None, "ts=-1.0 is before 1970"),
    (-(2**70), None, "is before 1970"),
    (1e300, None, "ts=1e+300 is after 2100-01-01"),
    (1_700_000_000_000, None, "milliseconds, not seconds?"),        # a producer sending milliseconds
    (2**70, None, "is after 2100-01-01"),
    (1_700_000_000.0 + 86_401, 1_700_000_000.0, "86401 s after its Kafka record's timestamp"),
    (4_000_000_000.0, 1_700_000_000.0, "(at most 86400 s: ATTNFLOW_MAX_FUTURE_S)"),
])
def test_absurd_timestamps_are_refused(ts, sent_ts, reason):
    import re

    raw = b'{"user_id": "u", "item_id": "i", "type": "view", "ts": %s}' % repr(ts).encode()  # big ints too
    with pytest.raises(BadEvent, match=r"^timestamp out of range: .*" + re.escape(reason)):
        decode_event(raw, SCENES, sent_ts)


@pytest.mark.parametrize("ts, sent_ts, max_future_s", [
    (0, None, 86_400.0),                                  # Amazon Beauty's synthetic times count from 0
    (874_965_758, 1_790_000_000.0, 86_400.0),              # MovieLens 100k: 1997
    (4_102_444_800.0, None, 86_400.0),                     # the absolute bound itself
    (1_700_000_000.0 + 86_400, 1_700_000_000.0, 86_400.0),  # exactly a day ahead of its record
    (1_700_000_000.0, 1_700_000_000.0, 0.0),               # no future allowed, the record's own time is
    (3_000_000_000.0, -0.001, 86_400.0),                   # a record without a timestamp (-1 ms)
])
def test_real_and_boundary_timestamps_are_kept(ts, sent_ts, max_future_s):
    doc = {"user_id": "u", "item_id": "i", "type": "view", "ts": ts}
    assert decode_event(orjson.dumps(doc), SCENES, sent_ts, max_future_s).ts == float(ts)


def test_reasons_quote_a_bad_value_briefly_and_records_cap_the_reason():
    """A reason once quoted a wrong-typed ``ts`` whole: a 900 kB string made a dead letter over Kafka's
    message limit."""
    from streams.codec import DEADLETTER_REASON_MAX_CHARS, DEADLETTER_RECORD_MAX_BYTES

    raw = orjson.dumps({"user_id": "u", "item_id": "i", "type": "view", "ts": "'\"" * 400_000})
    with pytest.raises(BadEvent) as caught:
        decode_event(raw, SCENES)
    assert str(caught.value).startswith("field 'ts' must be a finite number") and len(str(caught.value)) < 200
    record = encode_deadletter(raw, "processing error: " + "\x01" * 10**6, "events", 0, 1)
    assert len(record) <= DEADLETTER_RECORD_MAX_BYTES
    assert len(orjson.loads(record)["reason"]) == DEADLETTER_REASON_MAX_CHARS


def test_the_timestamps_the_codec_allows_cannot_poison_attention():
    """Ages are clamped at 0 and the extremes allowed (0 and ``MAX_TS``) stay finite in float32: a
    history at ts 0 ranked at MAX_TS, and back at 0 again, still gives finite scores and a full list.

    A training example's history is all older than its event; at ts 1e300 (once accepted: it is
    finite) every age overflowed float32 to inf, every logit was -inf and the softmax NaN, which one
    optimiser step would have spread to every user's parameters."""
    import jax.numpy as jnp
    import numpy as np

    from models.kernels import RankInputs, user_vectors
    from models.params import init_params

    from models.config import EngineConfig
    from models.engine import Engine, SourcedEvent
    from models.store import MemoryStore
    from streams.codec import MAX_TS

    engine = Engine(EngineConfig(dim=8, history=4, scenes=SCENES, k=3, initial_capacity=8, buckets=(4,),
                                 max_batch=4), MemoryStore())
    offset = 0
    for ts in (0.0, 1.0, MAX_TS, 0.0, MAX_TS):
        events = [SourcedEvent(Event("u", f"i{offset % 5}", "click", ts), 0, offset),
                  SourcedEvent(Event("v", f"i{(offset + 2) % 5}", "view", 1.0), 0, offset + 1)]
        offset += 2
        result = engine.process(events)
        engine.commit(result)
        for rec in result.recommendations:
            assert len(rec.items) == min(3, engine.n_items) and np.isfinite(rec.scores).all(), (ts, rec)

    cfg = engine.cfg
    for age, finite in ((MAX_TS, True), (np.inf, False)):
        ranks = RankInputs(hist_item=jnp.arange(4, dtype=jnp.int32)[None],
                           hist_type=jnp.zeros((1, 4), jnp.int32),
                           hist_age=jnp.full((1, 4), age, jnp.float32), scene=jnp.zeros(1, jnp.int32),
                           exclude=jnp.full((1, 1), -1, jnp.int32))
        user, attn = user_vectors(init_params(cfg, capacity=8), jnp.zeros((1, len(SCENES), cfg.dim)),
                                  jnp.zeros((1, len(SCENES))), ranks)
        assert bool(np.isfinite(attn).all() and np.isfinite(user).all()) is finite, age
