"""Kafka access control on a real broker: a second broker whose client listener takes only SASL SCRAM
logins (``ATTNFLOW_KAFKA_SASL=1 deploy/kafka.sh start``, own ports and state dir, stopped after).
The project's clients log in with the settings' credentials, a wrong password is refused with a
message that shows no password, and a real worker runs over SASL without its password appearing
in its log, ``/stats``, ``/metrics``, error messages or dead-letter records."""
from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import urllib.request

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.kafka_clients import connect
from streams.replay import read_topic
from streams.topics import TopicNames, admin_client, ensure_topics
from tests.conftest import REPO, _free_port
from tests.integration.test_pipeline import CATALOGUE, Producer, latest_lists, wait_for

pytestmark = pytest.mark.integration

USER = "attnflow-test"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    """(bootstrap, password) of a SASL_PLAINTEXT SCRAM-SHA-512 broker; its password is the one
    deploy/kafka.sh generates into the state dir."""
    state = tmp_path_factory.mktemp("kafka-sasl")
    port = _free_port()
    env = {**os.environ, "ATTNFLOW_STATE_DIR": str(state), "ATTNFLOW_KAFKA_PORT": str(port),
           "ATTNFLOW_KAFKA_CONTROLLER_PORT": str(_free_port()),
           "ATTNFLOW_KAFKA_INTERNAL_PORT": str(_free_port()),
           "ATTNFLOW_KAFKA_SASL": "1", "ATTNFLOW_KAFKA_SASL_USERNAME": USER}
    env.pop("ATTNFLOW_KAFKA_SASL_PASSWORD", None)
    script = str(REPO / "deploy" / "kafka.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        password_file = state / "kafka" / "sasl.password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text()
        assert len(password) >= 32 and password not in started.stdout + started.stderr
        yield f"127.0.0.1:{port}", password
    finally:
        subprocess.run(["bash", script, "stop"], env=env, check=False)


@pytest.fixture
def sasl_settings(settings, sasl_broker):
    bootstrap, password = sasl_broker
    return dataclasses.replace(settings, kafka_bootstrap=bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
                               kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=USER,
                               kafka_sasl_password=password)


def test_clients_with_the_right_credentials_create_topics_produce_and_consume(sasl_settings):
    have = ensure_topics(sasl_settings)
    assert TopicNames.of(sasl_settings).events in have
    topic = TopicNames.of(sasl_settings).events
    producer = connect(KafkaProducer, sasl_settings, acks="all")
    try:
        sent = producer.send(topic, key=b"user-1", value=b"hello over SCRAM").get(timeout=30)
    finally:
        producer.close()
    consumer = connect(KafkaConsumer, sasl_settings, topic, group_id=None, auto_offset_reset="earliest",
                       consumer_timeout_ms=10_000)
    try:
        got = [(m.partition, m.offset, m.value) for m in consumer]
    finally:
        consumer.close()
    assert (sent.partition, sent.offset, b"hello over SCRAM") in got


def wrong_password_error(settings, password) -> str:
    """The message a client with a wrong password fails with."""
    wrong = dataclasses.replace(settings, kafka_sasl_password="not-" + password)
    with pytest.raises(ConnectionError) as refused:
        admin_client(wrong, bootstrap_timeout_ms=8000)
    return str(refused.value)


def test_a_wrong_password_is_refused_with_a_clear_message(sasl_settings):
    message = wrong_password_error(sasl_settings, sasl_settings.kafka_sasl_password)
    assert sasl_settings.kafka_bootstrap in message and repr(USER) in message and "SCRAM-SHA-512" in message
    assert "ATTNFLOW_KAFKA_SASL_USERNAME" in message
    assert sasl_settings.kafka_sasl_password not in message
    plaintext = dataclasses.replace(sasl_settings, kafka_security_protocol="PLAINTEXT")
    with pytest.raises(ConnectionError):  # no login at all is refused too
        admin_client(plaintext, bootstrap_timeout_ms=5000)


def test_a_worker_over_sasl_processes_events_and_never_shows_its_password(sasl_settings, redis_store,
                                                                          tmp_path):
    settings, password = sasl_settings, sasl_settings.kafka_sasl_password
    ensure_topics(settings)
    producer = Producer(settings)
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, worker)
        for step in range(3):
            for n in range(6):
                producer.event(f"user-{n}", CATALOGUE[(step + n) % 40], "click", 1_700_000_000.0 + step)
        producer.raw(b'{"user_id": "u", "item_id": "x", "type": "view", "ts": "soon"}')
        wait_for(settings.web_port, len(producer.sent) + 1)
        stats = worker_stats(settings.web_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
    finally:
        stop_worker(worker)
        producer.close()
    assert worker.returncode == 0, f"worker exited with {worker.returncode} (log: {log_path})"
    assert set(latest_lists(settings)) == {f"user-{n}" for n in range(6)}
    assert all(redis_store.read_state(f"user-{n}") is not None for n in range(6))
    deadletters = list(read_topic(settings, "deadletter", timeout_s=3))
    assert len(deadletters) == 1

    refused = wrong_password_error(settings, password)
    for where, text in (("worker log", log_path.read_text(errors="replace")),
                        ("/stats", orjson.dumps(stats).decode()), ("/metrics", metrics),
                        ("dead letters", orjson.dumps(deadletters).decode()),
                        ("error message", refused), ("settings repr", repr(settings))):
        assert password not in text, f"the Kafka SASL password appears in the {where}"
