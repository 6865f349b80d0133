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
    """``decode_event`` checks the common case in one go; every answer must match the field-by-field checks."""
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
        doc = {"user_id": user, "item_id": item, "type": etype, "ts": ts, "scene": scene, "event_id": event_id}
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
