"""Request-time ranking: a list for any user, in any configured scene, when a page asks for one.

``parse_request`` turns a query (``user_id``, ``scene``, ``k``, ``exclude``) into a :class:`Request` or a
:class:`RequestError` that says what is wrong. :class:`RequestRanker` answers a batch of requests with one
store read and one ``kernels.rank`` call: it ranks from the stored attention state with the newest
parameter snapshot, over the scene's catalogue only, minus the request's ``exclude`` ids and the items
of the configured ``mask_types``. A user without a stored state gets the scene's popular items
(counted by the rank workers, ``models.store.scene_counts``), filled up from the model's own ranking
of an empty history when the scene has too few. No Kafka, no HTTP here (``streams.serving`` is the
web side); the store is the only I/O.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping

import jax
import numpy as np

from models import batching, kernels
from models.catalogue import SceneCatalogue
from models.config import EngineConfig
from models.events import TYPE_CODE
from models.explain import explanations
from models.params import Params, capacity_for, from_bytes, grow, init_params, mismatch
from models.state import NO_ITEM, StateCodec, StateLayoutError

log = logging.getLogger(__name__)

MAX_USER_ID = 256  # characters: an id longer than that is no user id a producer sends


@dataclass(frozen=True)
class RequestLimits:
    """What a request may ask for: ``k`` in 1..``max_k``, at most ``max_exclude`` excluded ids; up to
    ``max_batch`` requests per kernel call (padded to the engine's user buckets)."""

    max_k: int = 100
    max_exclude: int = 100
    max_batch: int = 32


class RequestError(ValueError):
    """A request that cannot be answered as asked: an HTTP status and a JSON body naming the problem."""

    def __init__(self, status: int, error: str, message: str, **details):
        super().__init__(message)
        self.status, self.error, self.details = status, error, details

    def body(self) -> dict:
        return {"error": self.error, "message": str(self), **self.details}


@dataclass(frozen=True, slots=True)
class Request:
    user_id: str
    scene: str
    k: int
    exclude: tuple[str, ...] = ()


def parse_request(query: Mapping[str, str], scenes: tuple[str, ...], default_k: int,
                  limits: RequestLimits = RequestLimits()) -> Request:
    """The request a query string asks for, or a 400 :class:`RequestError` saying what is wrong.

    ``scene`` defaults to ``default``, ``k`` to ``default_k``; ``exclude`` is a comma-separated list of ids.

    >>> parse_request({"user_id": "u1", "scene": "home", "k": "5", "exclude": "a,b"}, ("default", "home"), 20)
    Request(user_id='u1', scene='home', k=5, exclude=('a', 'b'))
    >>> parse_request({"user_id": "u1", "scene": "moon"}, ("default", "home"), 20)
    Traceback (most recent call last):
    ...
    models.requests.RequestError: unknown scene 'moon'; configured scenes: default, home
    """
    user_id = (query.get("user_id") or "").strip()
    if not user_id:
        raise RequestError(400, "missing_user_id", "query parameter 'user_id' is required")
    if len(user_id) > MAX_USER_ID:
        raise RequestError(400, "bad_user_id", f"'user_id' is longer than {MAX_USER_ID} characters")
    scene = query.get("scene") or scenes[0]
    if scene not in scenes:
        raise RequestError(400, "unknown_scene",
                           f"unknown scene {scene!r}; configured scenes: {', '.join(scenes)}",
                           scenes=list(scenes))
    raw_k = query.get("k")
    try:
        k = default_k if raw_k in (None, "") else int(raw_k)
    except ValueError:
        raise RequestError(400, "bad_k", f"'k' must be an integer from 1 to {limits.max_k}, got {raw_k!r}",
                           max_k=limits.max_k) from None
    if not 1 <= k <= limits.max_k:
        raise RequestError(400, "bad_k", f"'k' must be from 1 to {limits.max_k}, got {k}", max_k=limits.max_k)
    exclude = tuple(dict.fromkeys(part.strip() for part in (query.get("exclude") or "").split(",")
                                  if part.strip()))
    if len(exclude) > limits.max_exclude:
        raise RequestError(400, "too_many_excludes", f"at most {limits.max_exclude} ids may be excluded, got "
                           f"{len(exclude)}", max_exclude=limits.max_exclude)
    return Request(user_id, scene, k, exclude)


@dataclass(slots=True)
class Answer:
    """A ranked list for one request. ``cold_start``: the user has no stored state, so the list is the
    scene's popular items (``scores``: their recent event counts; 0 for items the model's prior filled in)."""

    user_id: str
    scene: str
    items: list[str]
    scores: list[float]
    model_version: int
    catalogue_version: int
    cold_start: bool
    # models.explain, when EngineConfig.explain_events > 0 (not for cold starts)
    explanation: dict | None = None

    def as_json(self) -> dict:
        doc = {"user_id": self.user_id, "scene": self.scene, "items": self.items, "scores": self.scores,
               "model_version": self.model_version, "catalogue_version": self.catalogue_version,
               "cold_start": self.cold_start}
        if self.explanation is not None:
            doc["explanation"] = self.explanation
        return doc


class RequestRanker:
    """Answers batches of requests from a store: stored states, item ids, scene catalogues, parameter
    snapshots and scene popularity. Each :meth:`answer` reads the users' states together with the
    snapshot and catalogue versions (one round trip) and applies what changed before ranking, so every
    answer uses the newest parameters and catalogue the store held when its batch started.

    ``shared_params`` (optional): a callable returning ``(model_version, params)`` of a rank worker's
    engine (or None before it has one); while those are the newest snapshot they are used, rather than
    a second copy of the item table. Not thread-safe: one thread calls :meth:`answer` (``streams.serving``
    runs it on its own executor).

    >>> from models.store import MemoryStore
    >>> store = MemoryStore(); _ = store.item_index(["a", "b", "c"])
    >>> ranker = RequestRanker(EngineConfig(dim=8, history=4, k=2, initial_capacity=8), store)
    >>> answer = ranker.answer([Request("nobody", "default", 2, exclude=("a",))])[0]
    >>> answer.cold_start, len(answer.items), "a" in answer.items
    (True, 2, False)
    """

    def __init__(self, cfg: EngineConfig, store, limits: RequestLimits = RequestLimits(), shared_params=None,
                 popularity_refresh_s: float = 5.0, clock=time.time):
        self.cfg, self.store, self.limits, self.shared_params = cfg, store, limits, shared_params
        self.codec = StateCodec(cfg)
        self.clock = clock
        self.params: Params = init_params(cfg)
        self.model_version = 0
        self._refused_version = 0
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._names = np.zeros(0, object)  # ``ids`` as an array, for vectorised lookups
        self.catalogue = SceneCatalogue()
        self.popularity_refresh_s = popularity_refresh_s
        self._popularity: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._popularity_at = -np.inf
        self._mask_codes = np.array([TYPE_CODE[t] for t in cfg.mask_types], np.int8)
        # Fixed shapes, so that a call never compiles: k is the configured list length when every request
        # of the call fits in it (a top-k of fewer blocks is cheaper), max_k otherwise, cut per request;
        # the exclusion columns are the history (for mask_types) plus max_exclude.
        self.list_lengths = sorted({min(cfg.k, limits.max_k), limits.max_k})
        self._exclude_width = (cfg.history if len(self._mask_codes) else 0) + max(1, limits.max_exclude)
        self.buckets = [b for b in cfg.buckets if b <= cfg.bucket(limits.max_batch)]
        self.unreadable_states = 0  # stored states that could not be decoded (answered as cold starts)

    # ---- keeping up with the store ---------------------------------------------------------------

    def sync(self, n_items: int, params_version: int, catalogue_version: int) -> None:
        """Apply what changed in the store since the last batch: new item ids, a newer
        snapshot, catalogue changes."""
        if n_items > len(self.ids):
            for item in self.store.item_ids(len(self.ids))[:n_items - len(self.ids)]:
                self.index[item] = len(self.ids)
                self.ids.append(item)
            self._names = np.asarray(self.ids, dtype=object)
        if catalogue_version > self.catalogue.version:
            self.catalogue.apply(self.store.item_scene_changes(self.catalogue.version))
        shared = self.shared_params() if self.shared_params is not None else None
        if shared is not None and shared[0] >= max(params_version, self.model_version):
            # the worker's own table (it grows it as the catalogue grows; items past it are not ranked yet)
            self.model_version, self.params = shared
            return
        if params_version > self.model_version and params_version != self._refused_version:
            self._load_params(params_version)
        capacity = capacity_for(len(self.ids), self.cfg.initial_capacity)
        if capacity > self.params.item_emb.shape[0]:
            # a new shape: compiles once, as the engine does
            self.params = grow(self.params, capacity, self.cfg.seed)

    def _load_params(self, version: int) -> None:
        blob = self.store.load_params(version)
        if blob is None:
            return
        try:
            params, _ = from_bytes(blob)
        except Exception as exc:  # a bad snapshot must not stop answering with the current one
            log.error("parameter snapshot %s unreadable, serving version %s: %s", version, self.model_version,
                      exc)
            self._refused_version = version
            return
        reason = mismatch(params, self.cfg)
        if reason:
            log.error("parameter snapshot %s does not fit this configuration (%s); serving version %s",
                      version, reason, self.model_version)
            self._refused_version = version
            return
        self.params = grow(params, capacity_for(max(params.item_emb.shape[0], len(self.ids)),
                                                self.cfg.initial_capacity), self.cfg.seed)
        self.model_version = version
        log.info("serving parameter snapshot %s", version)

    def prime(self) -> None:
        """Load the catalogue, the newest snapshot and the scene popularity before the first request."""
        self.sync(self.store.n_items(), self.store.params_version(), self.store.catalogue_version())
        self._refresh_popularity(force=True)

    def _refresh_popularity(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._popularity_at < self.popularity_refresh_s:
            return
        limit = 2 * (self.limits.max_k + self.limits.max_exclude)  # room for hidden and excluded items
        popular = self.store.scene_popularity(list(self.cfg.scenes), limit, now=now)
        self._popularity = {
            code: (np.array([i for i, _ in popular.get(scene, [])], np.int64),
                   np.array([n for _, n in popular.get(scene, [])], np.float64))
            for code, scene in enumerate(self.cfg.scenes)}
        self._popularity_at = now

    # ---- answering -------------------------------------------------------------------------------

    def answer(self, requests: list[Request], now: float | None = None) -> list[Answer]:
        """One list per request (in order): one store read, one kernel call per ``max_batch`` requests.
        ``now``: the time histories are aged to (default: the clock)."""
        if not requests:
            return []
        now = self.clock() if now is None else now
        users = list(dict.fromkeys(r.user_id for r in requests))
        read = self.store.read_batch(users, [])
        self.sync(read.n_items, read.params_version, read.catalogue_version)
        stored = dict(zip(users, read.states))
        values = [stored[r.user_id] for r in requests]
        states, cold = self._decode(values)
        if cold.any():
            self._refresh_popularity()
        out: list[Answer] = []
        for start in range(0, len(requests), self.limits.max_batch):
            stop = start + self.limits.max_batch
            out += self._rank(requests[start:stop], states[start:stop], cold[start:stop], now,
                              read.catalogue_version)
        return out

    def _decode(self, values: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """Decoded states (fresh ones for unknown users) and which rows are cold starts."""
        try:
            states = self.codec.decode(values)
        except StateLayoutError:
            broken = self.codec.unreadable(values)
            self.unreadable_states += len(broken)
            log.warning("%d stored states unreadable (%s): answered as unknown users", len(broken),
                        next(iter(broken.values())))
            values = [None if row in broken else v for row, v in enumerate(values)]
            states = self.codec.decode(values)
        return states, np.array([v is None for v in values], bool)

    def _rank(self, requests: list[Request], states: np.ndarray, cold: np.ndarray, now: float,
              catalogue_version: int) -> list[Answer]:
        cfg, B = self.cfg, len(requests)
        scene = np.array([cfg.scene_code(r.scene) for r in requests], np.int8)
        excluded = [np.array([self.index[i] for i in r.exclude if i in self.index], np.int32)
                    for r in requests]
        k = next(k for k in self.list_lengths if k >= max(r.k for r in requests))
        top_items, top_scores, ranks = self._kernel(states, scene, excluded, now, k)
        masks = self.catalogue.mask(self.params.item_emb.shape[0])
        names = self._names
        explained = [None] * B
        if cfg.explain_events and not cold.all():
            explained = explanations(self.params, states["interest"], states["interest_weight"], ranks, names,
                                     cfg.scenes, cfg.explain_events, cfg.bucket(B))
        out = []
        for b, request in enumerate(requests):
            items, scores = top_items[b], top_scores[b]
            keep = items >= 0
            items, scores = items[keep], scores[keep]
            if cold[b]:
                items, scores = self._cold_start(int(scene[b]), request.k, excluded[b], masks, items)
            else:
                items, scores = items[:request.k], np.round(scores[:request.k].astype(np.float64), 6)
            out.append(Answer(request.user_id, request.scene, names[items].tolist(), scores.tolist(),
                              self.model_version, catalogue_version, bool(cold[b]),
                              None if cold[b] else explained[b]))
        return out

    def _kernel(self, states: np.ndarray, scene: np.ndarray, excluded: list[np.ndarray], now: float, k: int):
        """``kernels.rank`` over the padded batch: ``[B, k]`` items (-1: none), scores, and the (unpadded)
        rank inputs they came from."""
        B = len(states)
        Bp = self.cfg.bucket(B)
        ranks = batching.rank_inputs(states, np.full(B, now), scene, self._mask_codes, excluded)
        ranks = ranks._replace(exclude=_pad_columns(ranks.exclude, self._exclude_width))
        items, scores = kernels.rank(
            self.params, batching.pad(states["interest"].astype(np.float32), Bp, 0.0),
            batching.pad(states["interest_weight"], Bp, 0.0), batching.pad_ranks(ranks, Bp),
            np.int32(min(len(self.ids), self.params.item_emb.shape[0])),
            self.catalogue.mask(self.params.item_emb.shape[0]),
            k=min(k, self.params.item_emb.shape[0]), chunk=self.cfg.item_chunk)
        return np.asarray(items)[:B], np.asarray(scores)[:B], ranks

    def _cold_start(self, scene: int, k: int, excluded: np.ndarray, masks: np.ndarray,
                    prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scene's most counted items that its catalogue shows and the request does not exclude;
        fewer than ``k`` are topped up from ``prior`` (the kernel's list for an empty history)."""
        popular, counts = self._popularity.get(scene, (np.zeros(0, np.int64), np.zeros(0)))
        known = popular < min(len(self.ids), len(masks))
        popular, counts = popular[known], counts[known]
        shown = ((masks[popular] >> np.uint32(scene)) & 1) == 1
        ok = shown & ~np.isin(popular, excluded)
        items, scores = popular[ok][:k], counts[ok][:k]
        if len(items) < k:
            fill = prior[~np.isin(prior, items)][:k - len(items)]
            items = np.concatenate([items, fill]).astype(np.int64)
            scores = np.concatenate([scores, np.zeros(len(fill))])
        return items, scores

    def warmup(self) -> float:
        """Load what the first request needs and compile the kernel for every batch bucket and list length
        (no request then waits on XLA)."""
        started = time.perf_counter()
        self.prime()
        for Bp in self.buckets:
            states = self.codec.decode([None] * Bp)
            for k in self.list_lengths:
                *_, ranks = jax.block_until_ready(self._kernel(states, np.zeros(Bp, np.int8),
                                                               [np.zeros(0, np.int32)] * Bp, self.clock(), k))
            if self.cfg.explain_events:
                explanations(self.params, states["interest"], states["interest_weight"], ranks, self._names,
                             self.cfg.scenes, self.cfg.explain_events, Bp)
        return time.perf_counter() - started


def _pad_columns(array: np.ndarray, width: int) -> np.ndarray:
    """``array`` [B, X] widened to ``width`` columns of ``NO_ITEM`` (X <= width).

    >>> _pad_columns(np.array([[3]], np.int32), 3).tolist()
    [[3, -1, -1]]
    """
    out = np.full((array.shape[0], width), NO_ITEM, np.int32)
    out[:, :array.shape[1]] = array
    return out
