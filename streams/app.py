"""The Faust application: settings → app, topics, and the agents and web views registered on it.

Run a worker with ``attnflow worker`` (or ``faust -A streams.app worker``). One rank worker owns
some partitions of ``events``; add processes to the consumer group to scale out.
"""
from __future__ import annotations

from streams.faustapp import make_faust_app
from streams.settings import Settings
from streams.topics import RawSchema, TopicNames

settings = Settings.from_env()
names = TopicNames.of(settings)
app = make_faust_app(settings)

events_topic = app.topic(names.events, schema=RawSchema(), partitions=settings.partitions)
recommendations_topic = app.topic(names.recommendations, key_type=bytes, value_type=bytes,
                                  partitions=settings.partitions)
feedback_topic = app.topic(names.feedback, key_type=bytes, value_type=bytes, partitions=settings.partitions)
deadletter_topic = app.topic(names.deadletter, key_type=bytes, value_type=bytes, partitions=1)
train_topic = app.topic(names.train, schema=RawSchema(), partitions=1)
catalogue_topic = app.topic(names.catalogue, schema=RawSchema(), partitions=1)
campaigns_topic = app.topic(names.campaigns, schema=RawSchema(), partitions=1)
ledger_topic = app.topic(names.ledger, key_type=bytes, value_type=bytes, partitions=1)

from streams import agents, views  # noqa: E402  (after ``app`` exists: they register on it)

rank_worker, train_worker = agents.register(app, settings, events_topic, recommendations_topic,
                                            feedback_topic, deadletter_topic, train_topic, catalogue_topic)
views.register(app, rank_worker, train_worker)
if settings.sponsored_slots:  # the attention market (streams/market.py); off: nothing of it runs
    from streams import market  # noqa: E402

    market.register(app, settings, campaigns_topic, ledger_topic, deadletter_topic)
