"""Bad input at volume: over 10,000 malformed messages mixed into valid traffic on the real broker.

Every malformed message must land in the dead-letter topic with its reason and its source
partition/offset (matched one to one), the worker must go on consuming, and the valid users' stored
states and recommendations must equal those of a run of the same valid events without the garbage.

Both runs are made comparable rather than lucky: online training is off (the parameters stay the
seeded initial ones), the catalogue is registered in the same order before either worker starts
(item indices, hence item vectors, match), and valid events come in rounds of one event per user,
each round produced only once the worker has finished the previous one, so no batch ever holds two
events of one user. Every Kafka record carries the same timestamp ``ref`` (the codec's reference for
``ts``), and valid times are set relative to it. Waits are for conditions; deadlines only turn a
hang into a failure.
"""
from __future__ import annotations

import random
import time
from dataclasses import replace

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from models.events import EVENT_TYPES
from models.state import StateCodec
from streams.agents import reason_code
from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.codec import MAX_ID_BYTES, MAX_TS, BadEvent, decode_event
from streams.kafka_clients import connect
from streams.replay import read_topic
from streams.topics import TopicNames, ensure_topics
from tests.integration.test_pipeline import CATALOGUE, wait_for

USERS = [f"user-{i}" for i in range(32)]
SCENES = ("default", "search", "product")  # the test settings' scenes
ROUNDS = 12
MALFORMED = 10_500
OVERSIZED = 12   # of those, values of 100-900 kB (each near the 1 MiB message limit costs transfer time)


def _doc(rng: random.Random, ref: float) -> dict:
    """A valid event document, for a real user half the time: garbage aimed at them must not touch them."""
    user = rng.choice(USERS) if rng.random() < 0.5 else f"ghost-{rng.randrange(10**6)}"
    return {"user_id": user, "item_id": rng.choice(CATALOGUE), "type": rng.choice(EVENT_TYPES),
            "ts": ref - rng.uniform(0, 86_400), "scene": rng.choice(SCENES)}


def _dumps(doc) -> bytes:
    return orjson.dumps(doc)


def _nested(depth: int) -> bytes:
    """JSON arrays nested ``depth`` deep (orjson writes at most 255 levels, and reads 1024)."""
    return b"[" * depth + b"]" * depth


def _invalid_json(rng, ref):
    doc = _dumps(_doc(rng, ref))
    return rng.choice([
        doc[:rng.randrange(1, len(doc))],                             # any proper prefix of an object
        rng.choice([b"not json", b"{'user_id': 'u'}", b'{"user_id": "u",}', b"NaN", b"{", b"}{", b"[1,]"]),
        doc[:-1] + b', "ts": NaN}', doc[:-1] + b', "x": 1e400}', b"x" + doc,
    ]), "invalid_json"


def _non_utf8(rng, ref):
    doc = _dumps(_doc(rng, ref))
    at = doc.index(b'"user_id":"') + len(b'"user_id":"')             # inside a string value
    bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80"])
    if rng.random() < 0.2:
        return b"\xff" + bytes(rng.randrange(256) for _ in range(rng.randrange(40))), "invalid_json"
    return doc[:at] + bad + doc[at:], "invalid_json"


def _empty(rng, ref):
    return rng.choice([None, b"", b" ", b"\n\t ", b"\r\n"]), "invalid_json"  # None: a tombstone, no value


def _not_an_object(rng, ref):
    # An array is a batched message (streams.codec.decode_events): each of these holds one element that
    # is not an event, so it makes one dead letter (an empty array is a bad_value, tested in tests/streams).
    return rng.choice([b"[1]", b"42", b"-0.5", b'"view"', b"null", b"true", b'[["u"]]',
                       _nested(rng.randrange(2, 1000))]), "not_an_object"


def _wrong_type(rng, ref):
    doc = _doc(rng, ref)
    name = rng.choice(["user_id", "item_id", "type", "ts", "scene", "event_id"])
    if name == "ts":
        doc["ts"] = rng.choice(["yesterday", "1700000000", True, False, [1.0], {"s": 1}])
    elif rng.random() < 0.2:  # an array nested deep, but within what JSON parsers take
        doc[name] = "nested"
        return _dumps(doc).replace(b'"nested"', _nested(rng.randrange(2, 1000)), 1), "wrong_type"
    else:
        doc[name] = rng.choice([5, -1.5, True, False, [doc.get(name, "x")], {"id": 1}])
    return _dumps(doc), "wrong_type"


def _missing_field(rng, ref):
    doc = _doc(rng, ref)
    name = rng.choice(["user_id", "item_id", "type", "ts"])
    if rng.random() < 0.5:
        del doc[name]
    else:
        doc[name] = None
    return _dumps(doc), "missing_field"


def _bad_value(rng, ref):
    doc = _doc(rng, ref)
    name = rng.choice(["user_id", "item_id", "type"])
    doc[name] = "" if name == "type" or rng.random() < 0.5 else "x" * (MAX_ID_BYTES + 1 + rng.randrange(100))
    return _dumps(doc), "bad_value"


def _unknown_type(rng, ref):
    doc = _doc(rng, ref)
    doc["type"] = rng.choice(["like", "VIEW", "view ", "purchased", "Click", "0", "déjà vu"])
    return _dumps(doc), "unknown_type"


def _unknown_scene(rng, ref):
    doc = _doc(rng, ref)
    doc["scene"] = rng.choice(["moon", "home", "Default", " search", "product\x00"])
    return _dumps(doc), "unknown_scene"


def _deeply_nested(rng, ref):
    depth = rng.randrange(1025, 5000)  # past orjson's limit of 1024
    if rng.random() < 0.5:
        return _nested(depth), "invalid_json"
    doc = _dumps(_doc(rng, ref))
    return doc[:-1] + b', "extra": ' + _nested(depth) + b"}", "invalid_json"


def _absurd_ts(rng, ref):
    doc = _doc(rng, ref)
    doc["ts"] = rng.choice([-1, -1e300, -(2**63), 1e300, MAX_TS + 1, 2**64 - 1,
                            ref * 1000, ref * 1e9,                 # milliseconds, nanoseconds
                            ref + 2 * 86_400, ref + 365 * 86_400])  # past ATTNFLOW_MAX_FUTURE_S (1 day)
    return _dumps(doc), "bad_timestamp"


KINDS = (_invalid_json, _non_utf8, _empty, _not_an_object, _wrong_type, _missing_field, _bad_value,
         _unknown_type, _unknown_scene, _deeply_nested, _absurd_ts)


def _oversized(rng, ref):
    n = rng.randrange(100_000, 900_000)
    doc = _doc(rng, ref)
    kind = rng.randrange(4)
    if kind == 0:
        return b"\xff" * n, "invalid_json"
    if kind == 1:
        doc["ts"] = "'\"" * (n // 3)  # a reason that quoted it whole would not fit in a dead letter
        return _dumps(doc), "wrong_type"
    if kind == 2:
        doc["user_id"] = "u" * n
        return _dumps(doc), "bad_value"
    doc["padding"], doc["scene"] = "\x01" * (n // 6), "moon"
    return _dumps(doc), "unknown_scene"


def malformed(seed: int, n: int, ref: float) -> list[tuple[bytes | None, str]]:
    """``n`` malformed event values and the dead-letter reason code each must get; deterministic."""
    rng = random.Random(seed)
    out = [_oversized(rng, ref) for _ in range(OVERSIZED)]
    out += [rng.choice(KINDS)(rng, ref) for _ in range(n - OVERSIZED)]
    rng.shuffle(out)
    return out


def valid_rounds(seed: int, ref: float) -> list[list[dict]]:
    """``ROUNDS`` rounds of one valid event per user, times increasing and before ``ref``."""
    rng = np.random.default_rng(seed)
    return [[{"user_id": user, "item_id": CATALOGUE[rng.integers(len(CATALOGUE))],
              "type": EVENT_TYPES[rng.integers(len(EVENT_TYPES))], "scene": SCENES[rng.integers(len(SCENES))],
              "ts": ref - 86_400 + 60 * r + 0.001 * u, "event_id": f"r{r}u{u}"}
             for u, user in enumerate(USERS)] for r in range(ROUNDS)]


def test_the_generator_makes_what_it_claims():
    """Each generated message is refused with the reason code it is filed under (no Kafka needed), so
    the integration test below checks the pipeline, not the generator."""
    ref = 1_790_000_000.0
    values = malformed(seed=21, n=2_000, ref=ref)
    assert {code for _, code in values} == {"invalid_json", "not_an_object", "wrong_type", "missing_field",
                                            "bad_value", "unknown_type", "unknown_scene", "bad_timestamp"}
    for value, code in values:
        with pytest.raises(BadEvent) as caught:
            decode_event(value, SCENES, ref)
        assert reason_code(str(caught.value)) == code, (value[:200] if value else value, str(caught.value))
    for doc in (d for r in valid_rounds(21, ref) for d in r):
        decode_event(orjson.dumps(doc), SCENES, ref)


def run(settings, log_path, rounds, garbage, ref):
    """One worker over ``rounds`` of valid events, each mixed with an equal share of ``garbage``.

    Returns (valid: [(doc, partition, offset)], garbage: {(partition, offset): (value, code)}, stats,
    whether the worker was still running at the end)."""
    ensure_topics(settings)
    topic = TopicNames.of(settings).events
    rng = random.Random(7)
    producer = connect(KafkaProducer, settings, acks="all", linger_ms=5, max_request_size=1_048_576)
    valid, dead, sent = [], {}, 0
    worker = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, worker)
        share = -(-len(garbage) // len(rounds))
        for r, docs in enumerate(rounds):
            messages = [(doc, None) for doc in docs] + [(None, g) for g in garbage[r * share:(r + 1) * share]]
            rng.shuffle(messages)
            futures = []
            for doc, bad in messages:
                if doc is not None:
                    key, value = doc["user_id"].encode(), orjson.dumps(doc)
                else:
                    value = bad[0]
                    key = rng.choice([None, rng.choice(USERS).encode(), b"\xff\xfe"]) if value is not None \
                        else rng.choice(USERS).encode()  # a tombstone (no value) needs a key
                future = producer.send(topic, key=key, value=value, timestamp_ms=int(ref * 1000))
                futures.append((doc, bad, future))
            producer.flush()
            for doc, bad, future in futures:
                meta = future.get(timeout=60)
                if doc is not None:
                    valid.append((doc, meta.partition, meta.offset))
                else:
                    dead[(meta.partition, meta.offset)] = bad
            sent += len(messages)
            stats = wait_for(settings.web_port, sent, timeout_s=120)  # the round is done: the next may come
        alive = worker.poll() is None
    finally:
        producer.close()
        stop_worker(worker)
    assert worker.returncode == 0, f"worker exited with {worker.returncode} (log: {log_path})"
    return valid, dead, stats, alive


def outputs(settings, store, valid, stats):
    """Per valid user: the stored state (its fence checked, then blanked: offsets differ between the
    runs) and the last recommendation; per event: its feedback."""
    codec = StateCodec(settings.engine_config())
    last = {doc["user_id"]: (partition, offset) for doc, partition, offset in valid}
    states = {}
    for user in USERS:
        state = codec.decode([store.read_state(user)])
        assert (int(state["partition"][0]), int(state["offset"][0])) == last[user]
        assert int(state["n_events"][0]) == ROUNDS
        state["offset"] = 0
        states[user] = codec.encode(state)[0]
    lists = {}
    for doc in read_topic(settings, "recommendations", timeout_s=30, max_messages=stats["recommendations"]):
        del doc["emitted_ts"]  # when it was sent: wall time
        lists[doc["user_id"]] = doc
    feedback = {doc["event_id"]: doc for doc in read_topic(settings, "feedback", timeout_s=30,
                                                          max_messages=stats["feedback"])}
    assert set(lists) == set(USERS) and len(feedback) == len(valid)
    return states, lists, feedback


@pytest.mark.integration
def test_malformed_messages_at_volume_are_dead_lettered_and_change_nothing(settings, redis_store, tmp_path):
    from models.store import RedisStore

    settings = replace(settings, train_enabled=False)
    clean = replace(settings, topic_prefix=settings.topic_prefix + "clean.",
                    redis_prefix=settings.redis_prefix + "-clean", app_id=settings.app_id + "-clean")
    clean_store = RedisStore(clean.redis_url, clean.redis_prefix)
    ref = float(int(time.time()))  # the records' timestamp; every outcome is relative to it
    rounds, garbage = valid_rounds(21, ref), malformed(21, MALFORMED, ref)
    try:
        for store in (redis_store, clean_store):
            store.item_index(CATALOGUE)  # the same item indices, so the same item vectors, in both runs

        expected_valid, _, clean_stats, _ = run(clean, tmp_path / "clean.log", rounds, [], ref)
        expected = outputs(clean, clean_store, expected_valid, clean_stats)
        valid, dead, stats, alive = run(settings, tmp_path / "garbage.log", rounds, garbage, ref)

        assert alive, "the worker stopped while taking malformed messages"
        assert len(dead) == MALFORMED, "every malformed message was produced"
        assert sum(stats["deadletters"].values()) == MALFORMED, stats["deadletters"]
        topic = TopicNames.of(settings).events
        records = list(read_topic(settings, "deadletter", timeout_s=30, max_messages=MALFORMED + 1))
        by_source = {(r["partition"], r["offset"]): r for r in records}
        assert len(by_source) == len(records) == MALFORMED, "one dead letter per malformed message"
        assert set(by_source) == set(dead), "dead letters carry their source partition and offset"
        for source, (value, code) in dead.items():
            record = by_source[source]
            assert record["topic"] == topic and record["reason"]
            assert reason_code(record["reason"]) == code, (source, code, record["reason"])
            if record.get("index") is None:  # the whole message
                assert record["value_bytes"] == len(value or b""), (source, record)
            else:  # the one bad element of a batched message: its own JSON (or the message, if unwritable)
                assert record["index"] == 0 and 0 < record["value_bytes"] <= len(value), (source, record)

        got = outputs(settings, redis_store, valid, stats)
        assert got[0] == expected[0], "stored states differ from the run without garbage"
        assert got[1] == expected[1], "recommendations differ from the run without garbage"
        assert got[2] == expected[2], "feedback differs from the run without garbage"
    finally:
        clean_store.clear()
        clean_store.close()
