"""river's online biased matrix factorisation as a baseline, on implicit feedback with sampled negatives.
river is imported when a model is built, so the other baselines do not need it.
"""
from __future__ import annotations

import numpy as np

from models.recommender import PAD, grow, in_scene, top_k


class RiverMF:
    """river's online biased matrix factorisation (``river.reco.BiasedMF``) on implicit feedback.

    Each event is a positive (y=1) followed by ``n_negatives`` items sampled uniformly from the items seen
    so far (y=0), trained with logistic loss. Ranking reads the learned item latents and biases out of
    river into numpy mirrors (synced for the items a learn step touched) and scores the whole catalogue
    with one matrix product; an unknown user gets item biases only.

    >>> model = RiverMF(n_factors=4, n_negatives=2, seed=0)
    >>> z = np.zeros(6, int)
    >>> for _ in range(30):
    ...     model.learn(np.array([0, 1, 2, 0, 1, 2]), np.array([0, 0, 0, 1, 2, 3]), z, z, z.astype(float))
    >>> int(model.recommend(np.array([5]), z[:1], z[:1].astype(float), k=1)[0, 0])  # most popular: item 0
    0
    """

    def __init__(self, n_factors: int = 32, n_negatives: int = 4, lr: float = 0.05, l2: float = 1e-4,
                 seed: int = 0, name: str = "river_mf"):
        from river import optim, reco

        self.name = name
        self.n_negatives = n_negatives
        self.mf = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(lr),
            latent_optimizer=optim.SGD(lr),
            loss=optim.losses.Log(),
            l2_bias=l2,
            l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.rng = np.random.default_rng(seed)
        self.item_factors = np.zeros((0, n_factors), np.float64)
        self.item_bias = np.zeros(0, np.float64)  # -inf for items never learned: they are never ranked
        self.seen = np.zeros(0, bool)
        self.seen_items: list[int] = []
        self.size = 0  # 1 + the largest item index learned

    def learn(self, users, items, types, scenes, ts) -> None:
        users = np.asarray(users).tolist()
        items = np.asarray(items, np.int64)
        if items.size == 0:
            return
        self.size = max(self.size, int(items.max()) + 1)
        self.item_factors = grow(self.item_factors, self.size)
        self.item_bias = grow(self.item_bias, self.size, -np.inf)
        self.seen = grow(self.seen, self.size, False)
        items = items.tolist()
        touched = set(items)
        learn_one = self.mf.learn_one
        draws = self.rng.random((len(items), self.n_negatives)).tolist()
        seen_items = self.seen_items
        for user, item, uniforms in zip(users, items, draws):
            if not self.seen[item]:
                self.seen[item] = True
                seen_items.append(item)
            learn_one(user, item, 1)
            if len(seen_items) > 1:
                for uniform in uniforms:
                    negative = seen_items[int(uniform * len(seen_items))]
                    if negative != item:
                        learn_one(user, negative, 0)
                        touched.add(negative)
        latents, biases = self.mf.i_latents, self.mf.i_biases
        for item in touched:
            self.item_factors[item] = latents[item]
            self.item_bias[item] = biases[item]

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        if self.size == 0:
            return np.full((len(users), k), PAD, np.int32)
        user_factors = np.zeros((len(users), self.item_factors.shape[1]))
        for row, user in enumerate(np.asarray(users).tolist()):
            latent = self.mf.u_latents.get(user)  # .get: a defaultdict lookup would invent a user
            if latent is not None:
                user_factors[row] = latent
        scores = user_factors @ self.item_factors[:self.size].T + self.item_bias[:self.size]
        if item_scenes is not None:
            scores = np.where(in_scene(item_scenes, scenes, self.size), scores, -np.inf)
        return top_k(scores, k, exclude)
