"""Kafka client settings → the keyword arguments of each Kafka client: the one place that turns the
security settings (protocol, SASL login, TLS trust) into what kafka-python, aiokafka and Faust take.

Every admin client, producer, consumer and Faust app of the project is built from these, so that
one set of ``ATTNFLOW_KAFKA_*`` variables reaches them all. The password is handed to the clients,
never into a message: ``describe`` names the user and mechanism only.
"""
from __future__ import annotations

import ssl

from streams.settings import PREFIX, Settings


def _sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL")


def _tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A TLS context trusting ``kafka_ssl_cafile`` (or the system CAs); None without TLS."""
    if not _tls(settings):
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None)


def client_kwargs(settings: Settings, **extra) -> dict:
    """kafka-python keyword arguments (``KafkaAdminClient``, ``KafkaProducer``, ``KafkaConsumer``):
    the bootstrap servers and the security settings, plus ``extra``.

    >>> kw = client_kwargs(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
    ...                             kafka_sasl_password="p"), acks="all")
    >>> kw["security_protocol"], kw["sasl_mechanism"], kw["sasl_plain_username"], kw["acks"]
    ('SASL_PLAINTEXT', 'SCRAM-SHA-512', 'u', 'all')
    >>> client_kwargs(Settings())
    {'bootstrap_servers': '127.0.0.1:9092', 'security_protocol': 'PLAINTEXT'}
    """
    kwargs = {"bootstrap_servers": settings.kafka_bootstrap,
              "security_protocol": settings.kafka_security_protocol}
    if _sasl(settings):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    if _tls(settings):
        kwargs.update(ssl_context=ssl_context(settings))
    kwargs.update(extra)
    return kwargs


def connect(client_class, settings: Settings, *args, **extra):
    """``client_class(*args, **client_kwargs(settings, **extra))`` for a kafka-python client; if the
    brokers cannot be reached or refuse the login, a ``ConnectionError`` that says where and as whom
    (``describe``), never with the password. kafka-python reports a refused SASL login only as a
    bootstrap that timed out, hence one message for both."""
    from kafka.errors import KafkaTimeoutError

    try:
        return client_class(*args, **client_kwargs(settings, **extra))
    except KafkaTimeoutError as exc:
        hint = ""
        if _sasl(settings):
            hint = f"; if they are up, check {PREFIX}KAFKA_SASL_USERNAME and _PASSWORD"
        raise ConnectionError(f"no Kafka broker at {describe(settings)} accepted a connection "
                              f"({exc}){hint}") from None


def faust_credentials(settings: Settings):
    """Faust's ``broker_credentials`` (SASL or TLS); None for PLAINTEXT.

    >>> faust_credentials(Settings()) is None
    True
    >>> faust_credentials(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
    ...                            kafka_sasl_password="p", kafka_sasl_mechanism="SCRAM-SHA-256"))
    <SASLCredentials: username=u>
    """
    import faust

    if _sasl(settings):
        # An ssl_context turns Faust's SASLCredentials into SASL_SSL
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism,
                                     ssl_context=ssl_context(settings))
    if _tls(settings):
        return faust.SSLCredentials(ssl_context(settings))
    return None


def aiokafka_kwargs(settings: Settings, **extra) -> dict:
    """aiokafka keyword arguments (``AIOKafkaProducer``, ``AIOKafkaConsumer``), mapped as Faust maps its
    credentials for its own aiokafka clients."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    return {"bootstrap_servers": settings.kafka_bootstrap, **auth, **extra}


def describe(settings: Settings) -> str:
    """The brokers and how clients log in, for messages: never the password.

    >>> describe(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
    ...                   kafka_sasl_password="p"))
    "127.0.0.1:9092 (SASL_SSL, SCRAM-SHA-512 user 'u')"
    """
    how = settings.kafka_security_protocol
    if _sasl(settings):
        how += f", {settings.kafka_sasl_mechanism} user {settings.kafka_sasl_username!r}"
    return f"{settings.kafka_bootstrap} ({how})"
