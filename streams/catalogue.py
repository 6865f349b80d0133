"""The catalogue agent's work: item add / update / hide messages → per-scene catalogue changes in the store.

Any one worker of the group consumes the single-partition ``catalogue`` topic and writes each change to
the store's change log (``RedisStore.set_item_scenes``); every rank worker and ``attnflow serve`` read
that log's length with each batch, so a hidden item leaves every list from their next batch on. A bad
message goes to the dead-letter topic with its reason; the rest of the batch is applied.
"""
from __future__ import annotations

import csv
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from streams.codec import BadEvent, decode_catalogue, encode_catalogue, encode_deadletter

log = logging.getLogger(__name__)


class CatalogueWorker:
    """Applies micro-batches of catalogue messages; ``send_deadletter(bytes)`` is awaited per refusal."""

    def __init__(self, settings, send_deadletter, store=None):
        self.settings = settings
        self.scenes = settings.engine_config().scenes
        self.send_deadletter = send_deadletter
        self.store = store
        self.applied = 0
        self.refused = 0
        self.retries = 0
        self.version = 0  # the store's catalogue version after the last batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-catalogue")

    def decode(self, messages) -> tuple[list[str], list[int], list[tuple[bytes, str, object]]]:
        """``(item ids, masks, refused)``: refused holds ``(raw, reason, message)`` for each bad message."""
        ids, masks, refused = [], [], []
        for raw, message in messages:
            try:
                item_id, mask = decode_catalogue(raw, self.scenes)
            except BadEvent as exc:
                refused.append((raw, str(exc), message))
                continue
            ids.append(item_id)
            masks.append(mask)
        return ids, masks, refused

    def _apply(self, ids: list[str], masks: list[int]) -> int:
        self.store = self.store or self.settings.store()
        return self.store.set_item_scenes(ids, masks)

    async def handle(self, events) -> None:
        """Apply one batch (in order: the last change of an item wins); returns once it is in the store
        and every refusal is in the dead-letter topic, so Faust's ack after it loses nothing."""
        from streams.lifecycle import run_retrying

        messages = [(event.value, event.message) for event in events]
        ids, masks, refused = self.decode(messages)
        for raw, reason, message in refused:
            log.warning("dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
            await self.send_deadletter(encode_deadletter(raw, reason, message.topic, message.partition,
                                                         message.offset))
        self.refused += len(refused)
        if ids:
            self.version = await run_retrying(self.executor, self, self._apply, ids, masks)
            self.applied += len(ids)


def read_catalogue_file(path: str | Path, scenes: tuple[str, ...]) -> tuple[list[tuple[bytes, bytes]],
                                                                           list[str]]:
    """Catalogue messages ``(key, value)`` from a JSONL file (one message object a line) or a CSV file
    (header ``item_id,action,scenes``; scenes separated by ``;``, empty: every scene), and the errors
    (``file:line: reason``) of the lines that would be dead-lettered.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("item_id,action,scenes\\ni1,add,home;search\\ni2,hide,\\ni3,add,moon\\n")
    >>> messages, errors = read_catalogue_file(f.name, ("default", "home", "search"))
    >>> [m[1] for m in messages], [e.split(": ", 1)[1] for e in errors]
    ([b'{"item_id":"i1","action":"add","scenes":["home","search"]}', b'{"item_id":"i2","action":"hide"}'], \
["unknown scene 'moon'; configured scenes: default, home, search (ATTNFLOW_SCENES)"])
    >>> os.unlink(f.name)
    """
    path = Path(path)
    messages, errors = [], []

    def add(lineno: int, value: bytes) -> None:
        try:
            item_id, _ = decode_catalogue(value, scenes)
        except BadEvent as exc:
            errors.append(f"{path}:{lineno}: {exc}")
            return
        messages.append((item_id.encode(), value))

    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            missing = {"item_id"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: CSV header must name item_id (and optionally action, scenes); "
                                 f"got {reader.fieldnames}")
            for row in reader:
                listed = [s for s in (row.get("scenes") or "").split(";") if s]
                add(reader.line_num, encode_catalogue(row["item_id"], row.get("action") or "update",
                                                      listed or None))
        else:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    add(lineno, line.strip().encode())
    return messages, errors
