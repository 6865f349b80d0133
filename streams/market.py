"""The market's stream side: the campaigns agent's work (campaign messages → the store, bad ones
dead-lettered with a reason), campaign files for ``attnflow campaigns``, and the ledger publisher.

Rank workers read the campaigns from the store (``models.market.book``), so every worker of the group
sees every campaign although one of them consumes the single-partition topic. Charges are appended to a
ledger list in the store by the same script that adds them to spend; ``LedgerPublisher`` copies that list
to the ``ledger`` topic, at least once, keyed by the deterministic charge id.
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from models.market.campaigns import apply_message, campaign_from_doc
from streams.codec import BadEvent, decode_campaign, encode_campaign, encode_deadletter, encode_ledger

log = logging.getLogger(__name__)


class CampaignWorker:
    """Applies micro-batches of campaign messages in topic order; ``send_deadletter(bytes)`` is awaited per
    refusal, before the batch returns (so Faust's ack after it loses nothing)."""

    def __init__(self, settings, send_deadletter, store=None):
        self.settings = settings
        self.scenes = settings.engine_config().scenes
        self.send_deadletter = send_deadletter
        self.store = store
        self.applied = self.refused = self.retries = 0
        self.version = 0
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-campaigns")

    def _apply(self, messages: list[tuple[str, object]]) -> int:
        """Read the stored campaigns, apply the messages in order, store the ones they changed."""
        self.store = self.store or self.settings.store()
        _, stored = self.store.campaigns()
        book = {cid: campaign_from_doc(orjson.loads(blob), self.scenes)[1] for cid, blob in stored.items()}
        changed = set()
        for action, value in messages:
            book = apply_message(book, action, value)
            changed.add(value.campaign_id if action == "upsert" else value)
        return self.store.put_campaigns({cid: encode_campaign(book[cid], self.scenes) for cid in changed
                                         if cid in book})

    async def handle(self, events) -> None:
        from streams.agents import run_retrying

        messages = []
        for event in events:
            message = event.message
            try:
                messages.append(decode_campaign(event.value, self.scenes))
            except BadEvent as exc:
                log.warning("dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset,
                            exc)
                await self.send_deadletter(encode_deadletter(event.value, str(exc), message.topic,
                                                             message.partition, message.offset))
                self.refused += 1
        if messages:
            self.version = await run_retrying(self.executor, self, self._apply, messages)
            self.applied += len(messages)


class LedgerPublisher:
    """Copies the store's ledger list to the ledger topic from its published cursor: ``send(records)``
    delivers ``(key, value)`` pairs and returns once the broker has them; only then the cursor moves. Any
    worker may run one: two publishing the same entries, or one that crashed before moving the cursor, send
    a charge again with the same charge id (readers keep one record per id, ``docs/market.md``)."""

    def __init__(self, store, batch: int = 1000):
        self.store, self.batch = store, batch
        self.published = 0

    def pending(self) -> tuple[int, list[tuple[bytes, bytes]]]:
        start = self.store.ledger_published()
        return start, [encode_ledger(entry) for entry in self.store.ledger_entries(start, self.batch)]

    def done(self, start: int, n: int) -> None:
        self.store.advance_ledger(start + n)
        self.published += n


def read_campaigns_file(path: str | Path,
                        scenes: tuple[str, ...]) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """Campaign messages ``(key, value)`` from a JSONL file (one message object a line) or a CSV file (header
    ``campaign_id,advertiser,items,bid,daily_budget[,start_ts,end_ts,scenes,status,action]``; items and
    scenes separated by ``;``), and the errors (``file:line: reason``) of lines that would be dead-lettered.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("campaign_id,advertiser,items,bid,daily_budget\\n"
    ...                 "c1,acme,i1;i2,0.5,10\\nc2,acme,i3,0,1\\n")
    >>> messages, errors = read_campaigns_file(f.name, ("default",))
    >>> [m[0] for m in messages], [e.split(": ", 1)[1] for e in errors]
    ([b'c1'], ['bid 0 must be above 0 and at most 1e+06'])
    >>> os.unlink(f.name)
    """
    path = Path(path)
    messages, errors = [], []

    def add(lineno: int, value: bytes) -> None:
        try:
            action, campaign = decode_campaign(value, scenes)
        except BadEvent as exc:
            errors.append(f"{path}:{lineno}: {exc}")
            return
        messages.append(((campaign.campaign_id if action == "upsert" else campaign).encode(), value))

    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            missing = {"campaign_id"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: CSV header must name campaign_id; got {reader.fieldnames}")
            for row in reader:
                doc = {k: v for k, v in row.items() if k and v not in (None, "")}
                for name in ("items", "scenes"):
                    if name in doc:
                        doc[name] = [part for part in doc[name].split(";") if part]
                for name in ("bid", "daily_budget", "start_ts", "end_ts"):
                    if name in doc:
                        try:
                            doc[name] = float(doc[name])
                        except ValueError:
                            pass  # left a string: decode_campaign says what is wrong with it
                add(reader.line_num, orjson.dumps(doc))
        else:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    add(lineno, line.strip().encode())
    return messages, errors


def market_for(settings):
    """The engine's market for ``settings`` (``models.market.book.Market``), None with no sponsored slots."""
    if not settings.sponsored_slots:
        return None
    from models.market.book import Market, MarketConfig
    from models.market.campaigns import to_micros

    cfg = MarketConfig(ranks=settings.market_ranks(), reserve=to_micros(settings.reserve_price),
                       window_s=settings.attribution_window_s, pacing=settings.pacing,
                       gain=settings.pacing_gain, prior_ctr=settings.calibration_prior_ctr,
                       quality_floor=settings.sponsored_quality_floor)
    return Market(cfg, settings.engine_config().scenes)


def register(app, settings, campaigns_topic, ledger_topic, deadletter_topic):
    """The campaigns agent (one worker of the group applies the single-partition topic) and, on every
    worker, a timer that publishes the store's new ledger entries."""
    import asyncio

    from streams.agents import run_retrying

    async def deadletter(value: bytes) -> None:
        await (await deadletter_topic.send(value=value))  # delivered before the batch is acked

    campaigns = CampaignWorker(settings, deadletter)

    @app.agent(campaigns_topic, concurrency=1, name="campaigns")
    async def apply_campaigns(stream):
        """Campaigns agent: campaign upserts / pauses → the store, where every rank worker reads them."""
        async for events in stream.take_events(500, within=0.2):
            await campaigns.handle(events)

    publisher = None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-ledger")

    @app.timer(interval=settings.ledger_interval_s)
    async def publish_ledger():
        """Ledger: store entries → ledger topic, the cursor moved once the broker has them."""
        nonlocal publisher
        if publisher is None:
            publisher = LedgerPublisher(settings.store())
        while True:
            start, records = await run_retrying(executor, campaigns, publisher.pending)
            if not records:
                return
            sent = [await ledger_topic.send(key=key, value=value) for key, value in records]
            await asyncio.gather(*sent)
            await run_retrying(executor, campaigns, publisher.done, start, len(records))

    return campaigns, publisher
