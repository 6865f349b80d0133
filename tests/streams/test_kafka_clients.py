"""Settings → Kafka client arguments (``streams/kafka_clients.py``), without a broker: each security
protocol maps to what kafka-python, aiokafka and Faust expect, and the SASL password stays out of
``repr(settings)``, the credentials' repr and every message."""
from __future__ import annotations

import ssl

import faust
import pytest

from streams.kafka_clients import aiokafka_kwargs, client_kwargs, describe, faust_credentials
from streams.settings import Settings

SECRET = "s3cret-never-shown"


def sasl(protocol="SASL_PLAINTEXT", **overrides) -> Settings:
    return Settings.from_env({}, kafka_security_protocol=protocol, kafka_sasl_username="attnflow",
                             kafka_sasl_password=SECRET, **overrides)


def test_plaintext_is_the_default_and_adds_nothing():
    plain = {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert client_kwargs(Settings()) == plain
    assert faust_credentials(Settings()) is None
    assert aiokafka_kwargs(Settings())["security_protocol"] == "PLAINTEXT"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_plaintext_maps_to_each_client(mechanism):
    settings = sasl(kafka_sasl_mechanism=mechanism)
    kw = client_kwargs(settings, acks="all")
    assert kw == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": mechanism, "sasl_plain_username": "attnflow",
                  "sasl_plain_password": SECRET, "acks": "all"}
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_PLAINTEXT", mechanism)
    assert (credentials.username, credentials.password) == ("attnflow", SECRET)
    assert credentials.ssl_context is None
    aio = aiokafka_kwargs(settings, client_id="x")
    wanted = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
              "sasl_plain_password": SECRET, "client_id": "x"}
    assert {key: aio[key] for key in wanted} == wanted


def test_tls_protocols_verify_the_broker():
    for settings, protocol in ((sasl("SASL_SSL"), "SASL_SSL"),
                               (Settings(kafka_security_protocol="SSL"), "SSL")):
        context = client_kwargs(settings)["ssl_context"]
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert aiokafka_kwargs(settings)["security_protocol"] == protocol
    assert faust_credentials(sasl("SASL_SSL")).protocol.value == "SASL_SSL"
    assert isinstance(faust_credentials(Settings(kafka_security_protocol="SSL")), faust.SSLCredentials)
    with pytest.raises(FileNotFoundError):  # a CA file that is not there fails at start-up, not on connect
        client_kwargs(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem"))


def test_the_password_is_in_no_repr_or_description():
    settings = sasl("SASL_SSL")
    for text in (repr(settings), repr(faust_credentials(settings)), describe(settings)):
        assert SECRET not in text
    assert "attnflow" in describe(settings)


def test_security_settings_are_validated():
    with pytest.raises(ValueError, match="KAFKA_SECURITY_PROTOCOL='TLS'"):
        Settings.from_env({"ATTNFLOW_KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM='GSSAPI'"):
        Settings.from_env({"ATTNFLOW_KAFKA_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(ValueError, match="needs ATTNFLOW_KAFKA_SASL_USERNAME") as missing:
        Settings.from_env({"ATTNFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "ATTNFLOW_KAFKA_SASL_PASSWORD": SECRET})
    assert SECRET not in str(missing.value)
    with pytest.raises(ValueError, match="MIN_INSYNC_REPLICAS=3"):
        Settings.from_env({"ATTNFLOW_MIN_INSYNC_REPLICAS": "3", "ATTNFLOW_REPLICATION_FACTOR": "2"})
