"""Candidate stage for large catalogues: an approximate inner-product index proposes items, the exact
attention score re-ranks them. Pure computation (faiss and JAX); the engine decides when to use it.

An item's static score ``e_i . u + b_i + pop_gain . log1p(pop_i)`` is the inner product of ``[e_i, b_i +
prior_i]`` with ``[u, 1]``, so a faiss IVF-Flat index over those rows finds the items with the largest
static scores without scanning the catalogue. The terms a user's history adds (the repeat score of
history items and the counted transitions of their neighbours, ``models.kernels``) touch only those
items: they join the candidates whatever the index says. The union is scored exactly as
``kernels.top_k_items`` scores the catalogue, masks included, and its top-k is the list.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.params import Params

NEG_INF = kernels.NEG_INF


@dataclass(frozen=True)
class CandidateConfig:
    """``candidates`` items proposed per user by the index (before the history's own items join);
    ``lists`` IVF cells (0: about ``2 * sqrt(items)``), ``nprobe`` of them searched per user;
    ``train_per_list`` sample rows per cell for k-means."""

    candidates: int = 512
    lists: int = 0
    nprobe: int = 32
    train_per_list: int = 48
    seed: int = 0

    def n_lists(self, n_items: int) -> int:
        """Cells of the index for ``n_items``.

        >>> CandidateConfig().n_lists(1_000_000), CandidateConfig(lists=64).n_lists(10)
        (2000, 64)
        """
        return self.lists or max(1, int(2 * np.sqrt(n_items)))


def item_rows(params: Params, start: int, stop: int) -> np.ndarray:
    """``[e_i, b_i + pop_gain . log1p(pop_i)]`` of items ``start .. stop`` (float32), the index's vectors."""
    emb = np.asarray(params.item_emb[start:stop], np.float32)
    prior = np.asarray(params.item_bias[start:stop] + jnp.log1p(params.pop[start:stop]) @ params.pop_gain,
                       np.float32)
    return np.ascontiguousarray(np.concatenate([emb, prior[:, None]], axis=1))


class CandidateIndex:
    """The items ``0 .. n_items`` of one parameter snapshot in a faiss IVF-Flat inner-product index.

    ``build`` trains the cells (k-means over a sample) and adds every item; ``extend`` adds items
    assigned since (new ids, scored with the same snapshot). Scene masks are not in the index: every
    ``search`` takes each row's scene and an item scene bitmask (``models.catalogue``), and searches
    only the items in that scene, so an item hidden since the build is never proposed.
    """

    def __init__(self, cfg: CandidateConfig = CandidateConfig()):
        import faiss

        self.cfg = cfg
        self._faiss = faiss
        self.index = None
        self.n_indexed = 0
        self.params: Params | None = None
        self._scenes = None        # the item scene mask array the selectors were made from
        self._selectors: dict[int, tuple] = {}

    def build(self, params: Params, n_items: int) -> None:
        faiss = self._faiss
        rows = item_rows(params, 0, n_items)
        lists = min(self.cfg.n_lists(n_items), max(1, n_items // 8))
        quantizer = faiss.IndexFlatIP(rows.shape[1])
        index = faiss.IndexIVFFlat(quantizer, rows.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1  # small catalogues: fewer sample rows than faiss would like is fine
        index.cp.seed = self.cfg.seed
        sample = min(n_items, lists * self.cfg.train_per_list)
        rng = np.random.default_rng(self.cfg.seed)
        index.train(rows[np.sort(rng.choice(n_items, sample, replace=False))] if sample < n_items else rows)
        index.add_with_ids(rows, np.arange(n_items, dtype=np.int64))
        self.index, self._quantizer, self.n_indexed, self.params = index, quantizer, n_items, params
        self._scenes, self._selectors = None, {}

    def extend(self, n_items: int) -> None:
        """Add the items ``n_indexed .. n_items`` (assigned since the build) to their nearest cells."""
        if n_items > self.n_indexed:
            rows = item_rows(self.params, self.n_indexed, n_items)
            self.index.add_with_ids(rows, np.arange(self.n_indexed, n_items, dtype=np.int64))
            self.n_indexed = n_items
            self._scenes, self._selectors = None, {}

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
            found = self._selectors[scene] = (params, selector, bitmap)  # bitmap and selector must outlive params
        return found[0]

    def search(self, user: np.ndarray, scene: np.ndarray, item_scenes: np.ndarray) -> np.ndarray:
        """``[B, candidates]`` int32 item ids per row (``-1`` padding), in the row's scene only."""
        C = min(self.cfg.candidates, self.n_indexed)
        query = np.ascontiguousarray(np.concatenate([user, np.ones((len(user), 1), np.float32)], axis=1),
                                     np.float32)
        out = np.full((len(user), C), -1, np.int64)
        for s in np.unique(scene).tolist():
            rows = np.flatnonzero(scene == s)
            _, ids = self.index.search(query[rows], C, params=self._selector(item_scenes, int(s)))
            out[rows] = ids
        return out.astype(np.int32)


@partial(jax.jit, static_argnames=("k",))
@kernels.exact_matmuls
def rerank(params: Params, user: jax.Array, ranks: kernels.RankInputs, proposed: jax.Array, n_items: jax.Array,
           item_scenes: jax.Array, *, k: int) -> tuple[jax.Array, jax.Array]:
    """Exact top-``k`` over each row's candidates: ``proposed`` ``[B, C]`` (-1 padding) plus its history
    items and their counted neighbours, scored as ``kernels.top_k_items`` scores the whole catalogue
    (``_chunk_scores``: dot product, bias, popularity prior, repeat and transition scores; items past
    ``n_items``, outside the row's scene or excluded get -inf). Returns ``(items, scores)`` as it does."""
    B = user.shape[0]
    pair_items, pair_weights = kernels.neighbour_pairs(params, ranks.hist_item, ranks.scene)
    cand = jnp.sort(jnp.concatenate([proposed, ranks.hist_item, pair_items], axis=1), axis=1)   # [B, T]
    first = jnp.concatenate([jnp.ones((B, 1), bool), cand[:, 1:] != cand[:, :-1]], axis=1)    # not a repeat
    safe = jnp.maximum(cand, 0)
    live = first & (cand >= 0) & (cand < jnp.reshape(n_items, (-1, 1)))
    live = live & (((item_scenes[safe] >> ranks.scene.astype(jnp.uint32)[:, None]) & 1) == 1)
    prior = params.item_bias[safe] + jnp.log1p(params.pop[safe]) @ params.pop_gain
    scores = jnp.einsum("bd,btd->bt", user, params.item_emb[safe]) + jnp.where(live, prior, NEG_INF)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], ranks.hist_item.shape)
    at = jax.vmap(jnp.searchsorted)(cand, ranks.hist_item)        # the first copy of each history item
    scores = scores.at[rows, at].add(kernels.copy_weights(params, ranks.hist_item), mode="drop")
    at = jax.vmap(jnp.searchsorted)(cand, pair_items)
    evidence = jnp.zeros(scores.shape, pair_weights.dtype).at[
        jnp.broadcast_to(jnp.arange(B)[:, None], at.shape), at].add(jnp.where(pair_items >= 0, pair_weights, 0.0),
                                                                     mode="drop")
    scores = scores + params.nbr_scale * jnp.log1p(evidence)
    at = jax.vmap(jnp.searchsorted)(cand, ranks.exclude)
    hit = (jnp.take_along_axis(cand, jnp.minimum(at, cand.shape[1] - 1), axis=1) == ranks.exclude)
    at = jnp.where(hit & (ranks.exclude >= 0), at, cand.shape[1])
    scores = scores.at[jnp.broadcast_to(jnp.arange(B)[:, None], at.shape), at].set(NEG_INF, mode="drop")
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
    ...                            np.zeros((2, 4), np.float32), np.zeros(2, np.int32), np.full((2, 1), -1, np.int32))
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
        """Rebuild for new parameters, extend for new items; nothing when both are as indexed."""
        if self.index.params is None or params.item_emb is not self.index.params.item_emb:
            self.index.build(params, n_items)
            self.builds += 1
        else:
            self.index.extend(n_items)

    def rank_users(self, params: Params, user, ranks: kernels.RankInputs, n_items: int, item_scenes: np.ndarray,
                   *, k: int) -> tuple[jax.Array, jax.Array]:
        import time

        self.refresh(params, n_items)
        started = time.perf_counter()
        proposed = self.index.search(np.asarray(user, np.float32), np.asarray(ranks.scene), item_scenes)
        self.search_s += time.perf_counter() - started
        return rerank(params, user, ranks, proposed, jnp.int32(n_items), item_scenes, k=k)

    def step(self, params: Params, interest, weight, events: kernels.FoldInputs, ranks: kernels.RankInputs,
             n_items: int, item_scenes: np.ndarray, *, k: int, gamma: float):
        """What ``kernels.step`` returns, ``(interest, weight, top_items, top_scores)``, from the candidates."""
        interest, weight = kernels.fold(params, interest, weight, events, gamma=gamma)
        user, _ = _user_vectors(params, interest, weight, ranks)
        items, scores = self.rank_users(params, user, ranks, n_items, item_scenes, k=k)
        return interest, weight, items, scores
