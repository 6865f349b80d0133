"""The batch engine: one micro-batch of events in, new attention states and ranked lists out.

It owns the host-side bookkeeping around the kernels (item ids, grouping by user, replay fences,
padding to buckets, feedback against the last shown list) and talks to a store through three
calls: ``read_batch``, ``write_states`` and snapshot loads. The Faust agent is a thin loop around
``Engine.process`` and ``Engine.commit``; evaluation and tests drive it directly.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models import batching, kernels
from models.batching import Examples
from models.catalogue import SceneCatalogue
from models.config import EngineConfig
from models.events import TYPE_CODE, Event
from models.explain import explanations
from models.params import Params, capacity_for, from_bytes, grow, init_params, mismatch
from models.state import NO_ITEM, StateCodec, StateLayoutError, describe
from models.store import TRANSIENT_ERRORS, fence_of, scene_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """An event and where it was read from; (partition, offset, index) is its replay fence.

    ``index`` is the event's position within its Kafka message: 0 for a single-event message, its
    place in the array for a batched one (``streams.codec.decode_events``)."""

    event: Event
    partition: int
    offset: int
    index: int = 0


@dataclass(slots=True)
class Recommendation:
    user_id: str
    scene: str
    items: list[str]
    scores: list[float]
    model_version: int
    event_ts: float
    explanation: dict | None = None  # models.explain, when EngineConfig.explain_events > 0
    sponsored: list[dict] | None = None  # models.market: the sponsored entries (rank, item, campaign, price)


@dataclass(slots=True)
class Feedback:
    """Did the user act on the list we last showed them, at which (1-based) rank, how old was it."""

    user_id: str
    item_id: str
    type: str
    scene: str
    ts: float
    hit: bool
    rank: int | None
    list_age_s: float | None
    list_scene: str | None
    event_id: str | None


@dataclass(slots=True)
class Rejected:
    event: SourcedEvent
    reason: str


@dataclass
class BatchResult:
    """What one batch produced. ``commit`` writes ``_users``/``_values`` once the outputs are sent."""

    recommendations: list[Recommendation] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    replayed: int = 0
    migrated: int = 0  # stored states read in the previous layout and converted (models.state.migrate)
    kernel_s: float = 0.0
    examples: Examples | None = None  # training examples (history before each applied event)
    # (scene, item index, events) of the applied events: scene popularity, counted with the write
    scene_counts: list[tuple[str, int, int]] = field(default_factory=list)
    _users: list[str] = field(default_factory=list)
    _values: list[bytes] = field(default_factory=list)
    market: object = None  # models.market.book.MarketBatch: sponsored slots sold, clicks charged (market on)


class Engine:
    """Folds micro-batches of events into user states in a store and ranks the catalogue for them.

    >>> from models.store import MemoryStore
    >>> engine = Engine(EngineConfig(dim=8, history=4, k=2, initial_capacity=8, buckets=(8, 32), max_batch=8),
    ...                 MemoryStore())
    >>> batch = [SourcedEvent(Event("u1", item, "click", ts), 0, off)
    ...          for off, (item, ts) in enumerate([("a", 1.0), ("b", 2.0), ("c", 3.0)])]
    >>> result = engine.process(batch)
    >>> engine.commit(result)
    [True]
    >>> rec = result.recommendations[0]
    >>> rec.user_id, len(rec.items), sorted(rec.items) == ["b", "c"] or len(set(rec.items)) == 2
    ('u1', 2, True)
    """

    def __init__(self, cfg: EngineConfig, store, params: Params | None = None, model_version: int = 0,
                 emit_examples: bool = False, market=None):
        self.cfg = cfg
        self.market = market  # models.market.book.Market: sponsored slots in every list; None: organic only
        self.emit_examples = emit_examples
        self.store = store
        self.codec = StateCodec(cfg)
        self.params = params if params is not None else init_params(cfg)
        self.model_version = model_version
        self._refused_version = 0  # a snapshot that could not be used: not fetched again on every batch
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._id_array: np.ndarray | None = None  # _ids as an array for vectorised lookups
        self._mask_codes = np.array([TYPE_CODE[t] for t in cfg.mask_types], np.int8)
        self.catalogue = SceneCatalogue()  # which scenes may rank each item (the store's change log)
        # models.candidates.CandidateRanker, once the catalogue passes candidates_above
        self.candidates = None
        # States computed by ``process`` and not yet written by ``commit``: the next batch builds on
        # them, so a worker can rank batch N+1 while batch N's outputs are still being delivered.
        # ``commit`` may run on another thread than ``process`` (the rank worker writes on its own).
        self._pending: dict[str, bytes] = {}
        self._pending_lock = threading.Lock()

    # ---- catalogue -------------------------------------------------------------------------

    def _learn_ids(self, ids: list[str], indices: list[int], n_items: int) -> None:
        if ids:
            self._id_array = None
        for item, index in zip(ids, indices):
            self._index[item] = index
        if n_items > len(self._ids):
            self._ids.extend([None] * (n_items - len(self._ids)))
        for item, index in zip(ids, indices):
            self._ids[index] = item

    def item_id(self, index: int) -> str:
        if self._ids[index] is None:  # assigned by another worker: fetch the tail of the catalogue once
            self._id_array = None
            missing = min(i for i, v in enumerate(self._ids) if v is None)
            # items assigned since this batch's read stay unknown until the next read counts them
            for offset, item in enumerate(self.store.item_ids(missing)[:len(self._ids) - missing]):
                self._ids[missing + offset] = item
                self._index[item] = missing + offset
        return self._ids[index]

    def _item_ids(self) -> np.ndarray:
        """The catalogue's ids as an object array (None where another worker
        assigned one we have not seen)."""
        if self._id_array is None or len(self._id_array) != len(self._ids):
            self._id_array = np.asarray(self._ids, dtype=object)
        return self._id_array

    @property
    def n_items(self) -> int:
        return len(self._ids)

    def sync_catalogue(self, version: int) -> None:
        """Apply the scene-catalogue changes up to ``version`` that this engine has not seen yet."""
        if version > self.catalogue.version:
            self.catalogue.apply(self.store.item_scene_changes(self.catalogue.version))

    def item_scenes(self) -> np.ndarray:
        """Each item table row's scene mask, as the kernels take it."""
        return self.catalogue.mask(self.params.item_emb.shape[0])

    # ---- parameters ------------------------------------------------------------------------

    def load_params(self, version: int) -> bool:
        """Swap in snapshot ``version`` from the store; False when it is gone or unreadable."""
        blob = self.store.load_params(version)
        if blob is None:
            return False
        try:
            params, meta = from_bytes(blob)
        except Exception as exc:  # a bad snapshot must not stop ranking with the current one
            log.error("parameter snapshot %s unreadable, keeping version %s: %s", version, self.model_version,
                      exc)
            self._refused_version = version
            return False
        reason = mismatch(params, self.cfg)
        if reason:
            log.error("parameter snapshot %s does not fit this configuration (%s); keeping "
                      "version %s until a newer one", version, reason, self.model_version)
            self._refused_version = version
            return False
        capacity = capacity_for(max(params.item_emb.shape[0], self.n_items), self.cfg.initial_capacity)
        self.params = grow(params, capacity, self.cfg.seed)
        self.model_version = version
        log.info("loaded parameter snapshot %s (%d item rows)", self.model_version, params.item_emb.shape[0])
        return True

    def _ensure_capacity(self) -> None:
        capacity = capacity_for(self.n_items, self.cfg.initial_capacity)
        if capacity > self.params.item_emb.shape[0]:
            log.info("catalogue grew to %d items: item table %d -> %d rows", self.n_items,
                     self.params.item_emb.shape[0], capacity)
            self.params = grow(self.params, capacity, self.cfg.seed)

    # ---- the batch -------------------------------------------------------------------------

    def process(self, batch: Sequence[SourcedEvent]) -> BatchResult:
        """Read states, skip replays, emit feedback, fold and rank. Call :meth:`commit` after sending.

        A call that raises (the store went away mid-batch) leaves no uncommitted state behind, so the
        caller may simply call it again with the same batch."""
        result = BatchResult()
        if not batch:
            return result
        rows: dict[str, int] = {}
        for sourced in batch:
            rows.setdefault(sourced.event.user_id, len(rows))
        users = list(rows)
        new_ids = list(dict.fromkeys(s.event.item_id for s in batch if s.event.item_id not in self._index))
        with self._pending_lock:  # taken before the read: a commit landing in between is then in both
            pending = dict(self._pending) if self._pending else None
        read = self.store.read_batch(users, new_ids)
        self._learn_ids(new_ids, read.item_index, read.n_items)
        if read.params_version > self.model_version and read.params_version != self._refused_version:
            self.load_params(read.params_version)
        self.sync_catalogue(read.catalogue_version)

        values = read.states
        if pending:
            values = [_newer(pending.get(u), v) for u, v in zip(users, values)]
        migrated = self.codec.migrated
        states, broken = self._decode(users, values)
        result.migrated = self.codec.migrated - migrated
        if result.migrated and not migrated:
            log.info("converting stored states from the previous layout (%s) as users are read",
                     describe(self.codec.previous.cfg))
        applied: list[tuple[int, SourcedEvent]] = []
        for sourced in batch:
            row = rows[sourced.event.user_id]
            if row in broken:
                result.rejected.append(Rejected(sourced, broken[row]))
            elif states["partition"][row] == sourced.partition and (
                    sourced.offset < states["offset"][row]
                    or (sourced.offset == states["offset"][row]
                        and sourced.index <= states["fence_index"][row])):
                result.replayed += 1  # already in the stored state: a redelivery after a crash or rebalance
            else:
                applied.append((row, sourced))
        if not applied:
            return result

        n_events = len(applied)
        row = np.fromiter((r for r, _ in applied), np.int64, n_events)
        item = np.fromiter((self._index[s.event.item_id] for _, s in applied), np.int32, n_events)
        result.feedback = self._feedback(states, applied, row, item)
        active = np.unique(row)
        self._fold_and_rank(states, applied, row, item, active, result)
        return result

    def commit(self, result: BatchResult) -> list[bool]:
        """Fenced write of the batch's new states; False for users a newer writer already advanced."""
        if result.market is not None:  # first: once the states are in, a replay of these events is skipped
            self.market.commit(self.store, result.market)
        written = self.store.write_states(result._users, result._values, scene_counts=result.scene_counts)
        with self._pending_lock:
            for user, value in zip(result._users, result._values):
                if self._pending.get(user) is value:
                    del self._pending[user]
        return written

    def discard_pending(self) -> None:
        """Forget processed-but-uncommitted states (their outputs were not delivered): the next batch
        reads what the store holds, and the events will be processed again when they are redelivered."""
        with self._pending_lock:
            self._pending.clear()
        if self.market is not None:
            self.market.discard()

    def _decode(self, users, values):
        try:
            return self.codec.decode(values), {}
        except StateLayoutError:
            pass  # find the bad ones; the rest of the batch goes on
        reasons = self.codec.unreadable(values)
        broken = {row: f"stored state of user {users[row]!r} is unreadable: {reason}"
                  for row, reason in reasons.items()}
        return self.codec.decode([None if row in reasons else v for row, v in enumerate(values)]), broken

    def _feedback(self, states, applied, row, item) -> list[Feedback]:
        shown = states["last_list"][row]                       # [n, K] the list each event's user last saw
        listed = shown[:, 0] != NO_ITEM
        hit = (shown == item[:, None]) & listed[:, None]
        ranks = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0).tolist()
        list_ts, list_scene = states["list_ts"][row].tolist(), states["list_scene"][row].tolist()
        scenes = self.cfg.scenes
        out = []
        for (_, sourced), is_listed, rank, shown_ts, shown_scene in zip(applied, listed.tolist(), ranks,
                                                                        list_ts, list_scene):
            event = sourced.event
            out.append(Feedback(
                user_id=event.user_id, item_id=event.item_id, type=event.type, scene=event.scene, ts=event.ts,
                hit=rank > 0, rank=rank or None, list_age_s=event.ts - shown_ts if is_listed else None,
                list_scene=scenes[shown_scene] if is_listed else None, event_id=event.event_id))
        return out

    def _fold_and_rank(self, states, applied, row, item, active, result: BatchResult) -> None:
        cfg = self.cfg
        S = cfg.n_scenes
        n_events = len(applied)
        etype = np.fromiter((TYPE_CODE[s.event.type] for _, s in applied), np.int8, n_events)
        scene = np.fromiter((cfg.scene_code(s.event.scene) for _, s in applied), np.int8, n_events)
        ts = np.fromiter((s.event.ts for _, s in applied), np.float64, n_events)

        # Compact to the users that have new events; ``dense`` is their row in the kernel batch.
        dense_of = np.full(len(states), -1, np.int64)
        dense_of[active] = np.arange(len(active))
        dense = dense_of[row]
        sub = states[active]
        B = len(active)
        prepared = batching.prepare(sub, dense, item, etype, scene, ts, S, with_examples=self.emit_examples)
        result.examples = prepared.examples
        result.scene_counts = scene_counts(scene, item, cfg.scenes)

        self._ensure_capacity()
        # Events are always padded to the full batch: folding padding is nearly free, and one
        # event size means start-up compiles one kernel per user bucket, not one per pair.
        Bp, Ep = cfg.bucket(B), cfg.bucket(max(n_events, cfg.max_batch))
        ranks = batching.rank_inputs(sub, prepared.now, prepared.scene, self._mask_codes)
        started = time.perf_counter()
        interest, weight, top_items, top_scores = self._step(
            batching.pad(sub["interest"].astype(np.float32), Bp, 0.0),
            batching.pad(sub["interest_weight"], Bp, 0.0),
            batching.pad_fold(prepared.fold, Bp, Ep, S), batching.pad_ranks(ranks, Bp))
        top_items, top_scores = np.asarray(top_items)[:B], np.asarray(top_scores)[:B]
        interest, weight = np.asarray(interest)[:B], np.asarray(weight)[:B]
        result.kernel_s = time.perf_counter() - started
        if self.market is not None:  # a second vectorised call: the auction over the campaigns' items
            top_items, top_scores, result.market = self.market.trade(
                self, applied, dense, [applied[i][1] for i in prepared.last], prepared.now, prepared.scene,
                ranks, interest, weight, Bp, top_items, top_scores)

        sub["interest"] = interest.astype(np.float16)
        sub["interest_weight"] = weight
        sub["last_list"] = top_items
        sub["list_ts"] = prepared.now
        sub["list_scene"] = prepared.scene
        last_source = [applied[i][1] for i in prepared.last]
        sub["partition"] = [s.partition for s in last_source]
        sub["offset"] = [s.offset for s in last_source]
        sub["fence_index"] = [s.index for s in last_source]

        users = [last_source[b].event.user_id for b in range(B)]
        result._users, result._values = users, self.codec.encode(sub)
        ids, valid = self._item_ids(), top_items >= 0
        shown_any = top_items[valid]
        unknown = shown_any[np.equal(ids[shown_any], None)]
        if len(unknown):
            self.item_id(int(unknown[0]))  # ids assigned by other workers: fetch the catalogue's tail once
            ids = self._item_ids()
        names = ids[np.where(valid, top_items, 0)].tolist()
        explained = self._explain(interest, weight, ranks, Bp) if cfg.explain_events else [None] * B
        scores = np.round(top_scores.astype(np.float64), 6).tolist()
        full = valid.all(axis=1).tolist()
        now, scene = prepared.now.tolist(), prepared.scene.tolist()
        for b in range(B):
            items, row_scores = names[b], scores[b]
            if not full[b]:  # fewer live items than k
                keep = valid[b]
                items = [n for n, ok in zip(items, keep) if ok]
                row_scores = [x for x, ok in zip(row_scores, keep) if ok]
            result.recommendations.append(Recommendation(
                user_id=users[b], scene=cfg.scenes[scene[b]], items=items, scores=row_scores,
                model_version=self.model_version, event_ts=now[b], explanation=explained[b]))
        if result.market is not None:
            self.market.annotate(result.recommendations, result.market)
        # Last: the next batch builds on these states. Registered before a step that can still fail (the
        # id fetch above reads the store), a retried batch would find its own events already applied
        # and skip them as replays, their outputs never sent.
        with self._pending_lock:
            self._pending.update(zip(result._users, result._values))

    def _explain(self, interest, weight, ranks, bucket: int) -> list[dict]:
        """Explanations of this batch's lists (``models.explain``), item ids fetched
        if other workers added them."""
        history = ranks.hist_item[ranks.hist_item >= 0]
        unknown = history[np.equal(self._item_ids()[history], None)]
        if len(unknown):
            self.item_id(int(unknown[0]))
        return explanations(self.params, interest, weight, ranks, self._item_ids(), self.cfg.scenes,
                            self.cfg.explain_events, bucket)

    def _step(self, interest, weight, fold, ranks):
        """``kernels.step`` over the whole catalogue, or through the candidate stage above
        ``cfg.candidates_above`` items (``models.candidates``; its index follows ``self.params``)."""
        cfg = self.cfg
        if cfg.candidates_above and self.n_items > cfg.candidates_above:
            if self.candidates is None:
                from models.candidates import CandidateConfig, CandidateRanker

                self.candidates = CandidateRanker(CandidateConfig(
                    cfg.candidates, cfg.candidates_lists, cfg.candidates_nprobe,
                    threads=cfg.candidates_threads, seed=cfg.seed))
            return self.candidates.step(self.params, interest, weight, fold, ranks, self.n_items,
                                        self.item_scenes(), k=cfg.k, gamma=cfg.interest_decay)
        return kernels.step(self.params, interest, weight, fold, ranks, jnp.int32(self.n_items),
                            self.item_scenes(), k=cfg.k, chunk=cfg.item_chunk, gamma=cfg.interest_decay)

    def prime(self) -> None:
        """Load what the first batch would otherwise fetch: the catalogue's ids and scene masks, the newest
        parameter snapshot, and an item table sized for both (growing it changes the kernel's shapes)."""
        n_items = self.store.n_items()
        if n_items > len(self._ids) or None in self._ids:
            ids = self.store.item_ids(0)
            self._learn_ids(ids, list(range(len(ids))), len(ids))
        version = self.store.params_version()
        if version > self.model_version:
            self.load_params(version)
        self.sync_catalogue(self.store.catalogue_version())
        self._ensure_capacity()

    def warmup(self) -> float:
        """Compile the kernel for every bucket a batch can use, and run each once over the catalogue
        as it stands (after :meth:`prime`), so that no request waits on XLA and a worker that joins
        a live stream ranks its first events as fast as the ones after. A store that cannot be
        reached yet leaves priming to the first batch; the kernels compile either way."""
        started = time.perf_counter()
        cfg = self.cfg
        Ep = cfg.bucket(cfg.max_batch)
        try:
            self.prime()
        except TRANSIENT_ERRORS as exc:
            log.warning("store not reachable during warm-up (%s): the first batch loads the catalogue", exc)
        self._ensure_capacity()
        for Bp in [b for b in cfg.buckets if b <= Ep]:
            states = self.codec.decode([None] * Bp)
            fold = kernels.FoldInputs(
                item=np.zeros(Ep, np.int32), type=np.zeros(Ep, np.int32),
                slot=np.full(Ep, Bp * cfg.n_scenes, np.int32), later=np.zeros(Ep, np.int32),
                slot_count=np.zeros((Bp, cfg.n_scenes), np.int32))
            ranks = batching.rank_inputs(states, np.zeros(Bp), np.zeros(Bp, np.int8), self._mask_codes)
            out = self._step(np.zeros((Bp, cfg.n_scenes, cfg.dim), np.float32),
                             np.zeros((Bp, cfg.n_scenes), np.float32), fold, ranks)
            jax.block_until_ready(out)
            if self.market is not None:  # the auction's scoring kernel (models.market.book) for this bucket
                self.market.warmup(self, np.asarray(out[0]), np.asarray(out[1]), ranks, Bp)
            if cfg.explain_events:
                explanations(self.params, states["interest"].astype(np.float32), states["interest_weight"],
                             ranks, self._item_ids(), cfg.scenes, cfg.explain_events, Bp)
        return time.perf_counter() - started


def _newer(pending: bytes | None, stored: bytes | None) -> bytes | None:
    """The uncommitted state unless the store already holds a newer one for the same partition
    (another worker got there first)."""
    if pending is None:
        return stored
    if stored is None:
        return pending
    try:
        (pp, po, pi), (sp, so, si) = fence_of(pending), fence_of(stored)
    except struct.error:  # a malformed stored value: let the decoder reject it with a reason
        return stored
    return stored if pp == sp and (so, si) >= (po, pi) else pending
