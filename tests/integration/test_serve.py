"""GET /recommendations on the real Redis: the stateless ``attnflow serve`` process, and a rank worker's view.

States are seeded by the engine itself (over a RedisStore in the test's own prefix) or by a real worker
fed through the real broker; answers are checked over HTTP against what the store holds: the scene's
catalogue, hidden items, exclusions, cold starts from the counted scene popularity, the newest snapshot.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from models.catalogue import scene_mask
from models.engine import Engine, SourcedEvent
from models.events import Event
from models.params import init_params, to_bytes
from streams.cli import REPO, start_worker, stop_worker, wait_ready, worker_stats
from tests.conftest import _free_port

pytestmark = pytest.mark.integration

CATALOGUE = [f"sku-{n:03d}" for n in range(60)]
SEARCH_ONLY = CATALOGUE[40:50]
HIDDEN = CATALOGUE[50:52]


def get(port: int, **query) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{port}/recommendations?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def start_serve(settings, log_path) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env()}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "serve"], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)


def seed(settings, store) -> dict[str, list[str]]:
    """Histories of a few users (every event through the engine, as a worker applies it); returns them."""
    scenes = settings.scenes
    store.set_item_scenes(SEARCH_ONLY, [scene_mask(["search"], scenes)] * len(SEARCH_ONLY))
    store.set_item_scenes(HIDDEN, [0] * len(HIDDEN))
    engine = Engine(settings.engine_config(), store)
    rows = [(f"user-{n % 6}", CATALOGUE[(7 * n) % 40], "view", 1_700_000_000.0 + n, "default")
            for n in range(60)]
    rows += [(f"fan-{n}", "sku-033", "click", 1_700_001_000.0 + n, "search") for n in range(5)]
    rows += [(f"fan-{n}", "sku-044", "click", 1_700_002_000.0 + n, "search") for n in range(3)]
    rows += [("fan-9", "sku-050", "click", 1_700_003_000.0, "search")] * 9  # hidden: counted, never shown
    for start in range(0, len(rows), 32):
        part = rows[start:start + 32]
        engine.commit(engine.process([SourcedEvent(Event(*row), 0, start + i) for i, row in enumerate(part)]))
    histories: dict[str, list[str]] = {}
    for user, item, *_ in rows:
        histories.setdefault(user, []).append(item)
    return histories


def test_serve_process_answers_from_redis(settings, redis_store, tmp_path):
    settings = dataclasses.replace(settings, serve_port=_free_port(), serve_max_k=30, serve_max_exclude=10,
                                   train_enabled=False)
    seed(settings, redis_store)
    params = init_params(settings.engine_config(), settings.initial_capacity)
    first_version = redis_store.publish_params(to_bytes(params, {}))
    server = start_serve(settings, tmp_path / "serve.log")
    port = settings.serve_port
    try:
        wait_ready(port, server)

        status, known = get(port, user_id="user-1", scene="default", k=10)
        assert status == 200 and not known["cold_start"], known
        assert len(known["items"]) == 10 and known["scores"] == sorted(known["scores"], reverse=True)
        assert (known["model_version"], known["catalogue_version"]) == (first_version, 12)
        assert not set(known["items"]) & set(SEARCH_ONLY + HIDDEN)

        # a scene the user never visited: ranked from the stored state, over that scene's catalogue only
        status, search = get(port, user_id="user-1", scene="search", k=30)
        assert status == 200 and not search["cold_start"] and len(search["items"]) == 30
        assert set(search["items"]) & set(SEARCH_ONLY) and not set(search["items"]) & set(HIDDEN)

        status, excluded = get(port, user_id="user-1", scene="default", k=10,
                               exclude=",".join(known["items"][:3]))
        assert status == 200 and not set(known["items"][:3]) & set(excluded["items"])
        assert excluded["items"][:7] == known["items"][3:10]

        # unknown user: the scene's counted popularity, without the hidden item that was counted most
        status, cold = get(port, user_id="nobody", scene="search", k=4)
        assert status == 200 and cold["cold_start"] and cold["items"][:2] == ["sku-033", "sku-044"]
        assert cold["scores"][:2] == [5.0, 3.0] and not set(cold["items"]) & set(HIDDEN)

        # concurrent requests (coalesced or not) get the answers they get one at a time
        asks = [dict(user_id=f"user-{n % 6}", scene=settings.scenes[n % 3], k=1 + n % 10) for n in range(24)]
        alone = [get(port, **ask)[1]["items"] for ask in asks]
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda ask: get(port, **ask), asks))
        assert [status for status, _ in together] == [200] * len(asks)
        assert [body["items"] for _, body in together] == alone

        # a new snapshot and a newly hidden item are used from the next request on
        boosted = next(item for item in CATALOGUE[:40] if item != known["items"][0])
        bias = params.item_bias.at[redis_store.item_index([boosted])[0]].set(1e3)
        newer = redis_store.publish_params(to_bytes(params._replace(item_bias=bias), {}))
        redis_store.set_item_scenes([known["items"][0]], [0])
        status, later = get(port, user_id="user-1", scene="default", k=10)
        assert later["model_version"] == newer and later["catalogue_version"] == 13
        assert later["items"][0] == boosted and known["items"][0] not in later["items"]

        for query, error in (({"scene": "default"}, "missing_user_id"),
                             ({"user_id": "u", "scene": "moon"}, "unknown_scene"),
                             ({"user_id": "u", "k": 31}, "bad_k"), ({"user_id": "u", "k": 0}, "bad_k"),
                             ({"user_id": "u", "exclude": ",".join(CATALOGUE[:11])}, "too_many_excludes")):
            status, body = get(port, **query)
            assert status == 400 and body["error"] == error, (query, body)
        assert get(port, user_id="u", scene="moon")[1]["scenes"] == list(settings.scenes)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as reply:
            stats = orjson.loads(reply.read())
        assert stats["responses"]["200"] >= 50 and stats["responses"]["400"] == 6
        assert stats["cold_starts"] == 1
    finally:
        stop_worker(server)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]


def wait_serving(port: int, process, timeout_s: float = 180.0) -> None:
    """Poll a worker's ``/ready`` until its request path is warm too."""
    deadline = time.time() + timeout_s
    while not wait_ready(port, process).get("serving"):
        assert time.time() < deadline, "the worker's /recommendations did not get ready"
        time.sleep(0.3)


def test_a_running_worker_answers_recommendations(settings, redis_store, tmp_path):
    from kafka import KafkaProducer

    from streams.kafka_clients import connect
    from streams.topics import TopicNames, ensure_topics

    # popularity re-read on every cold start: the events below land within the default 5 s of the warm-up
    # explanations on: both the topic's lists and the API's answers must carry them
    settings = dataclasses.replace(settings, train_enabled=False, popularity_refresh_s=0.0, explain=True)
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    producer = connect(KafkaProducer, settings, acks="all")
    try:
        wait_serving(settings.web_port, worker)
        sent = 0
        for n in range(40):
            user, scene = f"user-{n % 5}", ("default", "search")[n % 2]
            doc = {"user_id": user, "item_id": CATALOGUE[n % 25], "type": "view", "ts": 1_700_000_000.0 + n,
                   "scene": scene}
            producer.send(TopicNames.of(settings).events, key=user.encode(),
                          value=orjson.dumps(doc)).get(timeout=30)
            sent += 1
        for n in range(6):  # one item clicked most in "product": what an unknown user there is shown first
            doc = {"user_id": f"fan-{n}", "item_id": "sku-024", "type": "click", "ts": 1_700_000_100.0 + n,
                   "scene": "product"}
            producer.send(TopicNames.of(settings).events, key=doc["user_id"].encode(),
                          value=orjson.dumps(doc)).get(timeout=30)
            sent += 1
        producer.flush()
        deadline = time.time() + 120
        while worker_stats(settings.web_port)["events"] < sent:
            assert time.time() < deadline, "the worker did not process the events"
            time.sleep(0.3)

        status, known = get(settings.web_port, user_id="user-2", scene="product", k=8)
        assert status == 200 and not known["cold_start"] and len(known["items"]) == 8, known
        assert set(known["items"]) <= set(CATALOGUE[:25])
        user_2_items = {CATALOGUE[n % 25] for n in range(40) if n % 5 == 2}
        why = known["explanation"]
        assert why["history"] and {e["item_id"] for e in why["history"]} <= user_2_items, why
        assert set(why["scene_interest"]) == {"default", "search"}, why
        status, cold = get(settings.web_port, user_id="stranger", scene="product", k=3)
        assert status == 200 and cold["cold_start"]
        assert cold["items"][0] == "sku-024" and cold["scores"][0] == 6.0
        status, bad = get(settings.web_port, user_id="user-2", scene="nowhere")
        assert status == 400 and bad["scenes"] == list(settings.scenes)
    finally:
        producer.close()
        stop_worker(worker)
    assert worker.returncode == 0
    from streams.replay import read_topic

    lists = [d for d in read_topic(settings, "recommendations", timeout_s=3) if d["user_id"] == "user-2"]
    assert lists and all(len(d["explanation"]["history"]) >= 1 for d in lists)
    assert all({e["item_id"] for e in d["explanation"]["history"]} <= user_2_items for d in lists)
