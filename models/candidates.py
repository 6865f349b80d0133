"""Candidate stage for large catalogues: an approximate inner-product index proposes items, the exact
attention score re-ranks them. Pure computation (faiss and JAX); the engine decides when to use it.

An item's static score ``e_i . u + b_i + g . log1p(pop_i)`` (``g``: the served popularity gains) is the
inner product of ``x_i = [e_i, b_i + prior_i]`` with ``[u, 1]``, so a faiss IVF-Flat index over those rows
finds the items with the largest static scores without scanning the catalogue. One more coordinate,
``sqrt(R^2 - |x_i|^2)`` (0 for the query), puts every item on a sphere of radius ``R`` without changing any
inner product with a query: the index's cells are then about directions, not dominated by the items of
largest norm (the MIPS-to-nearest-neighbour reduction of Bachrach et al., RecSys 2014). The terms a user's
history adds (the repeat score of history items and the counted transitions of their neighbours,
``models.kernels``) touch only those items: they join the candidates whatever the index says. The union is
scored exactly as ``kernels.top_k_items`` scores the catalogue, masks included, and its top-k is the list.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.counted_scores import pop_gains
from models.params import Params

NEG_INF = kernels.NEG_INF
MAX_OUTLIERS = 256  # items proposed to every row (``CandidateIndex.extend``) before the index is rebuilt


@dataclass(frozen=True)
class CandidateConfig:
    """``candidates`` items proposed per user by the index (before the history's own items join);
    ``lists`` IVF cells (0: about ``2 * sqrt(items)``), ``nprobe`` of them searched per user;
    ``train_per_list`` sample rows per cell for k-means; ``threads`` faiss (OpenMP) threads, 0: one per core.
    One is the default: the engine's kernels use the cores, and on a shared 2-core machine a search took
    0.37 ms per user on one thread and 0.77 on two."""

    candidates: int = 512
    lists: int = 0
    nprobe: int = 64
    train_per_list: int = 48
    threads: int = 1
    seed: int = 0

    def n_lists(self, n_items: int) -> int:
        """Cells of the index for ``n_items``.

        >>> CandidateConfig().n_lists(1_000_000), CandidateConfig(lists=64).n_lists(10)
        (2000, 64)
        """
        return self.lists or max(1, int(2 * np.sqrt(n_items)))


def item_rows(params: Params, start: int, stop: int, radius: float | None = None) -> tuple[np.ndarray, float]:
    """The index's vectors of items ``start .. stop``, ``[e_i, b_i + pop_gain . log1p(pop_i), sqrt(R^2 -
    |.|^2)]`` (float32), and ``R``: ``radius``, or the largest norm when None. An item longer than a given
    ``radius`` (one added after the build) gets 0 there: it can still be found, a little less surely.

    >>> from models.config import EngineConfig
    >>> from models.params import init_params
    >>> rows, radius = item_rows(init_params(EngineConfig(dim=4, history=2, k=1), capacity=8), 0, 8)
    >>> rows.shape, bool(np.allclose(np.linalg.norm(rows, axis=1), radius))
    ((8, 6), True)
    """
    emb = np.asarray(params.item_emb[start:stop], np.float32)
    prior = np.asarray(params.item_bias[start:stop] + jnp.log1p(params.pop[start:stop]) @ pop_gains(params),
                       np.float32)
    rows = np.concatenate([emb, prior[:, None], np.zeros((len(emb), 1), np.float32)], axis=1)
    norm2 = np.einsum("nd,nd->n", rows, rows)
    radius = float(np.sqrt(norm2.max(initial=0.0))) if radius is None else radius
    rows[:, -1] = np.sqrt(np.maximum(radius * radius - norm2, 0.0))
    return np.ascontiguousarray(rows), radius


class CandidateIndex:
    """The items ``0 .. n_items`` of one parameter snapshot in a faiss IVF-Flat index (``item_rows``).

    ``build`` trains the cells (k-means over a sample) and adds every item; ``extend`` adds items
    assigned since (new ids, scored with the same snapshot). Scene masks are not in the index: every
    ``search`` takes each row's scene and an item scene bitmask (``models.catalogue``), and searches
    only the items in that scene, so an item hidden since the build is never proposed.
    """

    def __init__(self, cfg: CandidateConfig = CandidateConfig()):
        import faiss

        self.cfg = cfg
        self._faiss = faiss
        if cfg.threads:
            faiss.omp_set_num_threads(cfg.threads)
        self.index = None
        self.n_indexed = 0
        self.radius = 0.0
        self.params: Params | None = None
        self.tables: tuple[np.ndarray, np.ndarray] | None = None  # score_tables(params)
        self.outliers = np.zeros(0, np.int32)  # items added since the build that every row is proposed
        self._scenes = None        # the item scene mask array the selectors were made from
        self._selectors: dict[int, tuple] = {}

    def build(self, params: Params, n_items: int) -> None:
        faiss = self._faiss
        rows, self.radius = item_rows(params, 0, n_items)
        lists = min(self.cfg.n_lists(n_items), max(1, n_items // 8))
        # every row has norm R, so the L2 order for a query is its inner-product order; L2 k-means gives
        # balanced cells where inner-product assignment favours the cells of largest norm
        quantizer = faiss.IndexFlatL2(rows.shape[1])
        index = faiss.IndexIVFFlat(quantizer, rows.shape[1], lists, faiss.METRIC_L2)
        index.cp.niter = 10
        # small catalogues: fewer sample rows than faiss would like is fine
        index.cp.min_points_per_centroid = 1
        index.cp.seed = self.cfg.seed
        sample = min(n_items, lists * self.cfg.train_per_list)
        rng = np.random.default_rng(self.cfg.seed)
        index.train(rows[np.sort(rng.choice(n_items, sample, replace=False))] if sample < n_items else rows)
        index.add_with_ids(rows, np.arange(n_items, dtype=np.int64))
        self.index, self._quantizer, self.n_indexed, self.params = index, quantizer, n_items, params
        self.tables = score_tables(params)
        self.outliers = np.zeros(0, np.int32)
        self._scenes, self._selectors = None, {}

    def extend(self, n_items: int) -> None:
        """Add the items ``n_indexed .. n_items`` (assigned since the build) to their nearest cells. One
        longer than the build's radius cannot sit on its sphere: it is proposed to every row instead
        (``outliers``), so that it is never missed; a rebuild takes it in."""
        if n_items > self.n_indexed:
            rows, _ = item_rows(self.params, self.n_indexed, n_items, self.radius)
            ids = np.arange(self.n_indexed, n_items, dtype=np.int64)
            longer = np.einsum("nd,nd->n", rows[:, :-1], rows[:, :-1]) > self.radius ** 2
            self.index.add_with_ids(np.ascontiguousarray(rows[~longer]), ids[~longer])
            self.outliers = np.concatenate([self.outliers, ids[longer].astype(np.int32)])
            self.n_indexed = n_items
            self._scenes, self._selectors = None, {}

    def set_nprobe(self, nprobe: int) -> None:
        """Search ``nprobe`` cells per row from now on (a recall / speed trade-off; no rebuild)."""
        self.cfg = replace(self.cfg, nprobe=nprobe)
        self._selectors = {}

    def _selector(self, item_scenes: np.ndarray, scene: int):
        """faiss search parameters that admit only indexed items of ``scene`` (bitmap over item ids)."""
        if item_scenes is not self._scenes:
            self._scenes, self._selectors = item_scenes, {}
        found = self._selectors.get(scene)
        if found is None:
            bits = (item_scenes[:self.n_indexed] >> np.uint32(scene)) & 1
            bitmap = np.packbits(bits.astype(np.uint8), bitorder="little")
            selector = self._faiss.IDSelectorBitmap(self.n_indexed, self._faiss.swig_ptr(bitmap))
            params = self._faiss.SearchParametersIVF(sel=selector, nprobe=self.cfg.nprobe)
            # bitmap and selector must outlive params
            found = self._selectors[scene] = (params, selector, bitmap)
        return found[0]

    def search(self, user: np.ndarray, scene: np.ndarray, item_scenes: np.ndarray) -> np.ndarray:
        """``[B, candidates]`` int32 item ids per row (``-1`` padding), in the row's scene only; then the
        ``outliers``, whatever their scene (the exact re-rank applies every mask)."""
        C = min(self.cfg.candidates, self.n_indexed)
        query = np.zeros((len(user), user.shape[1] + 2), np.float32)
        query[:, :-2], query[:, -2] = user, 1.0
        out = np.full((len(user), C), -1, np.int64)
        for s in np.unique(scene).tolist():
            rows = np.flatnonzero(scene == s)
            _, ids = self.index.search(query[rows], C, params=self._selector(item_scenes, int(s)))
            out[rows] = ids
        if len(self.outliers):
            out = np.concatenate([out, np.broadcast_to(self.outliers, (len(out), len(self.outliers)))],
                                 axis=1)
        return out.astype(np.int32)


def score_tables(params: Params) -> tuple[np.ndarray, np.ndarray]:
    """The item table and each item's static prior ``b_i + pop_gain . log1p(pop_i)`` as host arrays: the
    candidates' rows are gathered with NumPy, 8x faster than XLA's gather on CPU at 1M items."""
    prior = params.item_bias + jnp.log1p(params.pop) @ pop_gains(params)
    return np.asarray(params.item_emb, np.float32), np.asarray(prior, np.float32)


_pairs = jax.jit(kernels.neighbour_pairs)


def rerank(params: Params, user, ranks: kernels.RankInputs, proposed, n_items: int, item_scenes,
           *, k: int, tables: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[jax.Array, jax.Array]:
    """Exact top-``k`` over each row's candidates: ``proposed`` ``[B, C]`` (-1 padding) plus its history
    items and their counted neighbours, scored as ``kernels.top_k_items`` scores the whole catalogue
    (``_chunk_scores``: dot product, bias, popularity prior, repeat and transition scores; items past
    ``n_items``, outside the row's scene or excluded get -inf). Returns ``(items, scores)`` as it does.
    ``tables``: ``score_tables(params)``, when the caller keeps them."""
    emb, prior = tables if tables is not None else score_tables(params)
    pairs = _pairs(params, ranks.hist_item, ranks.scene)
    cand = np.sort(np.concatenate([np.asarray(proposed, np.int32), np.asarray(ranks.hist_item, np.int32),
                                   np.asarray(pairs[0], np.int32)], axis=1), axis=1)               # [B, T]
    first = np.ones(cand.shape, bool)
    first[:, 1:] = cand[:, 1:] != cand[:, :-1]                                                # not a repeat
    safe = np.maximum(cand, 0)
    scene = np.asarray(ranks.scene).astype(np.uint32)
    in_scene = ((np.asarray(item_scenes)[safe] >> scene[:, None]) & 1) == 1
    live = first & (cand >= 0) & (cand < n_items) & in_scene
    static = (np.einsum("bd,btd->bt", np.asarray(user, np.float32), emb[safe])
              + np.where(live, prior[safe], NEG_INF))
    return _finish(params, static.astype(np.float32), cand, first, ranks, pairs, k=k)


@partial(jax.jit, static_argnames=("k",))
def _finish(params: Params, scores, cand, first, ranks: kernels.RankInputs, pairs, *, k: int):
    """``rerank``'s history terms (repeat, transitions), exclusions and top-k over sorted candidates."""
    B = scores.shape[0]
    pair_items, pair_weights = pairs

    def rows(at):
        return jnp.broadcast_to(jnp.arange(B)[:, None], at.shape)

    at = jax.vmap(jnp.searchsorted)(cand, ranks.hist_item)        # the first copy of each history item
    scores = scores.at[rows(at), at].add(kernels.copy_weights(params, ranks.hist_item), mode="drop")
    at = jax.vmap(jnp.searchsorted)(cand, pair_items)
    evidence = jnp.zeros(scores.shape, pair_weights.dtype).at[rows(at), at].add(
        jnp.where(pair_items >= 0, pair_weights, 0.0), mode="drop")
    scores = scores + params.nbr_scale * jnp.log1p(evidence)
    at = jax.vmap(jnp.searchsorted)(cand, ranks.exclude)
    hit = jnp.take_along_axis(cand, jnp.minimum(at, cand.shape[1] - 1), axis=1) == ranks.exclude
    at = jnp.where(hit & (ranks.exclude >= 0), at, cand.shape[1])
    scores = scores.at[rows(at), at].set(NEG_INF, mode="drop")
    scores = jnp.where(first, scores, NEG_INF)
    top, pos = jax.lax.top_k(scores, k)
    items = jnp.take_along_axis(cand, pos, axis=1)
    return jnp.where(top > NEG_INF / 2, items, -1).astype(jnp.int32), top


_user_vectors = jax.jit(kernels.exact_matmuls(kernels.user_vectors))


class CandidateRanker:
    """``kernels.step`` for catalogues too large to scan: fold, then the index's candidates re-ranked.

    The index follows the parameters it is given: a new snapshot (or a grown item table) rebuilds it,
    items added since extend it, and the item scene masks are applied at every search.

    >>> from models.config import EngineConfig
    >>> from models.params import init_params
    >>> cfg = EngineConfig(dim=8, history=4, k=3, initial_capacity=64)
    >>> params = init_params(cfg)
    >>> ranker = CandidateRanker(CandidateConfig(candidates=16, lists=4, nprobe=4))
    >>> user = np.asarray(params.item_emb[:2] * 4)
    >>> ranks = kernels.RankInputs(np.full((2, 4), -1, np.int32), np.zeros((2, 4), np.int32),
    ...                            np.zeros((2, 4), np.float32), np.zeros(2, np.int32),
    ...                            np.full((2, 1), -1, np.int32))
    >>> items, _ = ranker.rank_users(params, user, ranks, 40, np.full(64, 1, np.uint32), k=3)
    >>> items.shape, bool((items < 40).all())
    ((2, 3), True)
    """

    def __init__(self, cfg: CandidateConfig = CandidateConfig()):
        self.cfg = cfg
        self.index = CandidateIndex(cfg)
        self.builds = 0
        self.search_s = 0.0   # time in the index, this ranker's lifetime (the rest is the kernels')

    def refresh(self, params: Params, n_items: int) -> None:
        """Rebuild for new parameters (or once ``MAX_OUTLIERS`` items sit outside the index), extend for new
        items; nothing when both are as indexed."""
        if (self.index.params is None or params.item_emb is not self.index.params.item_emb
                or len(self.index.outliers) > MAX_OUTLIERS):
            self.index.build(params, n_items)
            self.builds += 1
        else:
            self.index.extend(n_items)

    def rank_users(self, params: Params, user, ranks: kernels.RankInputs, n_items: int,
                   item_scenes: np.ndarray, *, k: int) -> tuple[jax.Array, jax.Array]:
        import time

        self.refresh(params, n_items)
        started = time.perf_counter()
        proposed = self.index.search(np.asarray(user, np.float32), np.asarray(ranks.scene), item_scenes)
        self.search_s += time.perf_counter() - started
        return rerank(params, user, ranks, proposed, n_items, item_scenes, k=k, tables=self.index.tables)

    def step(self, params: Params, interest, weight, events: kernels.FoldInputs, ranks: kernels.RankInputs,
             n_items: int, item_scenes: np.ndarray, *, k: int, gamma: float):
        """What ``kernels.step`` returns, from the candidates:
        ``(interest, weight, top_items, top_scores)``."""
        interest, weight = kernels.fold(params, interest, weight, events, gamma=gamma)
        user, _ = _user_vectors(params, interest, weight, ranks)
        items, scores = self.rank_users(params, user, ranks, n_items, item_scenes, k=k)
        return interest, weight, items, scores
