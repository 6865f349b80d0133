"""Topic names, partition counts and topic creation: the one place that knows them.

Every topic name is ``<topic_prefix><name>``; events and outputs are keyed by user id so one
user's events stay in order on one partition and their recommendations replace each other.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import faust

from streams.settings import Settings

log = logging.getLogger(__name__)


class RawSchema(faust.Schema):
    """Keys and values reach the agents as the bytes that came: they decode events themselves
    (``streams.codec``), so Faust's codec registry has nothing to do.

    Faust's own decode for a ``bytes`` topic with the ``raw`` serializer gives the same event, but
    looks the key and the value up in its codec registry and the event class in the app's settings
    for every message: about 6 µs of the event loop per event (cProfile of a rank worker).
    """

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app, *, on_key_decode_error=None, on_value_decode_error=None, default_propagate=False):
        event_type = app.conf.Event  # looked up once, not per message

        async def decode(message, *, propagate: bool = default_propagate):
            return event_type(app, message.key, message.value, message.headers, message)

        return decode


@dataclass(frozen=True)
class TopicNames:
    events: str
    recommendations: str
    feedback: str
    deadletter: str
    train: str
    catalogue: str
    campaigns: str
    ledger: str

    @classmethod
    def of(cls, settings: Settings) -> "TopicNames":
        p = settings.topic_prefix
        return cls(events=f"{p}events", recommendations=f"{p}recommendations", feedback=f"{p}feedback",
                   deadletter=f"{p}events.deadletter", train=f"{p}train",
                   catalogue=f"{p}catalogue", campaigns=f"{p}campaigns", ledger=f"{p}ledger")

    def partitions(self, settings: Settings) -> dict[str, int]:
        """How many partitions each topic gets; training examples go to a single partition (one trainer),
        catalogue changes and campaigns to one as well (a few per second at most, applied in the order sent),
        and the ledger too (one ordered record of money; keyed by charge id)."""
        n = settings.partitions
        return {self.events: n, self.recommendations: n, self.feedback: n, self.deadletter: 1, self.train: 1,
                self.catalogue: 1, self.campaigns: 1, self.ledger: 1}


def topic_configs(settings: Settings) -> dict[str, str]:
    """Configs of the topics ``ensure_topics`` creates: on replicated topics, ``min.insync.replicas``, so
    that a write acked with acks=all is on that many brokers.

    >>> topic_configs(Settings(replication_factor=3)), topic_configs(Settings())
    ({'min.insync.replicas': '2'}, {})
    """
    if settings.replication_factor > 1:
        return {"min.insync.replicas": str(settings.topic_min_insync_replicas())}
    return {}


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics with their partition counts, the replication factor and ``topic_configs``;
    returns {name: partitions} as they exist. Raises ``PartitionMismatch`` when a topic that was already
    there has another partition count than the settings ask for: that is never changed silently."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = TopicNames.of(settings)
    wanted = names.partitions(settings)
    admin = admin_client(settings, client_id=f"{settings.app_id}-admin",
                         request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        configs = topic_configs(settings)
        missing = [NewTopic(name, n, settings.replication_factor, topic_configs=configs)
                   for name, n in wanted.items() if name not in existing]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics %s", [t.name for t in missing])
        described = admin.describe_topics(list(wanted))
        have = {t.get("name", t.get("topic")): len(t["partitions"]) for t in described}
    finally:
        admin.close()
    # topics created just now have the count asked for; a topic that was there must already have it
    problems = partition_problems({name: n for name, n in wanted.items() if name in existing}, have)
    if problems:
        raise PartitionMismatch("; ".join(problems))
    return have


class PartitionMismatch(RuntimeError):
    """An existing topic's partition count differs from the settings: refused, never changed silently."""


def partition_problems(wanted: dict[str, int], have: dict[str, int]) -> list[str]:
    """What differs between the partition counts the settings ask for and those the topics have.

    A different count of ``events`` moves users to other partitions, where their stored fences (partition,
    offset) no longer match, so it must be a deliberate migration (docs/operations.md), not a side effect.
    A topic missing from ``have`` is reported as missing; a count of 0 (metadata not there yet) is skipped.

    >>> partition_problems({"events": 4, "train": 1}, {"events": 6, "train": 1})[0][:53]
    'topic events has 6 partitions, the settings ask for 4'
    >>> partition_problems({"events": 4}, {})
    ['topic events is missing (attnflow topics creates it)']
    """
    problems = []
    for name, n in wanted.items():
        got = have.get(name)
        if got is None:
            problems.append(f"topic {name} is missing (attnflow topics creates it)")
        elif got and got != n:
            problems.append(f"topic {name} has {got} partitions, the settings ask for {n} "
                            "(ATTNFLOW_PARTITIONS; docs/operations.md says how to change it)")
    return problems


def check_topics(settings: Settings, timeout_s: float = 30.0) -> tuple[dict[str, int], list[str]]:
    """``({name: partitions}, problems)`` of the pipeline's topics as they exist; creates nothing."""
    wanted = TopicNames.of(settings).partitions(settings)
    admin = admin_client(settings, client_id=f"{settings.app_id}-admin",
                         request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        present = [name for name in wanted if name in existing]
        described = admin.describe_topics(present) if present else []
        have = {t.get("name", t.get("topic")): len(t["partitions"]) for t in described}
    finally:
        admin.close()
    return have, partition_problems(wanted, have)


def admin_client(settings: Settings, **extra):
    """A ``KafkaAdminClient`` for ``settings`` (``streams.kafka_clients.connect``)."""
    from kafka.admin import KafkaAdminClient

    from streams.kafka_clients import connect

    return connect(KafkaAdminClient, settings, **extra)


def delete_topics(settings: Settings) -> None:
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        doomed = [name for name in TopicNames.of(settings).partitions(settings) if name in existing]
        if doomed:
            admin.delete_topics(doomed)
    finally:
        admin.close()
