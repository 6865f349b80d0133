"""The attention model as an offline recommender: the evaluator drives it, the kernels are the workers'.

``AttentionRecommender`` keeps every user's attention state in one structured array (the same
record the workers keep in Redis), ranks with ``kernels.rank`` and learns with the online
``Trainer`` on the same training examples the workers emit. ``fit`` is the offline bootstrap:
the same online pass repeated for a few epochs (states reset each epoch, parameters kept).
"""
from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np

from models import batching, kernels
from models.config import EngineConfig
from models.events import TYPE_CODE, EventLog
from models.params import Params
from models.state import StateCodec
from models.training import TrainConfig, Trainer


class AttentionRecommender:
    """Attention over the user's history with scene transfer, learned online.

    >>> log = EventLog.from_columns("toy", ["a", "a", "b", "b"] * 20, ["x", "y"] * 40, [1] * 80,
    ...                             np.arange(80.0))
    >>> model = AttentionRecommender(EngineConfig(dim=8, history=4, k=2, initial_capacity=16,
    ...                              scenes=("default",)), TrainConfig(batch_size=8, replay_steps=0))
    >>> model.learn(log.user[:2], log.item[:2], log.type[:2], log.scene[:2], log.ts[:2])
    >>> model.recommend(np.array([0]), np.array([0]), np.array([5.0]), k=2).shape
    (1, 2)
    """

    name = "attention"

    def __init__(self, cfg: EngineConfig, train: TrainConfig = TrainConfig(), epochs: int = 5,
                 batch: int = 256, params: Params | None = None, transfer: bool = True):
        self.cfg = cfg
        self.codec = StateCodec(cfg)
        self.trainer = Trainer(cfg, train, params)
        self.epochs = epochs
        self.batch = batch
        self.transfer = transfer
        self.name = "attention" if transfer else "attention_no_transfer"
        self.states = self.codec.decode([None] * 1024)
        self.n_items = 0
        self.seen = np.zeros(1024, bool)  # items learned so far (only these may be recommended)
        self._mask_codes = np.array([TYPE_CODE[t] for t in cfg.mask_types], np.int8)

    @property
    def params(self) -> Params:
        params = self.trainer.params
        if not self.transfer:  # ablation: the same model with the scene-transfer term switched off
            params = params._replace(transfer=jnp.asarray(-1e4, jnp.float32))
        return params

    def config(self) -> dict:
        return {"engine": {k: v for k, v in self.cfg.__dict__.items() if k not in ("buckets",)},
                "train": dict(self.trainer.train_cfg.__dict__), "epochs": self.epochs,
                "transfer": self.transfer}

    def _ensure_users(self, users: np.ndarray) -> None:
        need = int(users.max()) + 1 if len(users) else 0
        if need > len(self.states):
            size = len(self.states)
            while size < need:
                size *= 2
            grown = self.codec.decode([None] * size)
            grown[: len(self.states)] = self.states
            self.states = grown

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        users = np.asarray(users, np.int64)
        self._ensure_users(users)
        states = self.states[users]
        unseen = np.flatnonzero(~self.seen[: self.n_items])  # below the index bound, never learned
        if item_scenes is not None:  # never-learned items leave every scene's catalogue: no exclusion lists
            item_scenes = self._catalogues(item_scenes, self.n_items)
        elif len(unseen):
            exclude = [np.r_[e, unseen] for e in exclude] if exclude is not None else [unseen] * len(users)
        ranks = batching.rank_inputs(states, np.asarray(ts, np.float64), np.asarray(scenes), self._mask_codes,
                                     exclude)
        return self._rank(ranks, states["interest"], states["interest_weight"], k, item_scenes=item_scenes)

    def _catalogues(self, item_scenes: np.ndarray, n_items: int) -> np.ndarray:
        """``item_scenes`` over the first ``n_items`` indices with the never-learned items in no scene."""
        out = np.zeros(n_items, np.uint32)
        known = min(n_items, len(item_scenes))
        out[:known] = np.asarray(item_scenes, np.uint32)[:known]
        return np.where(self.seen[:n_items], out, np.uint32(0))

    def _rank(self, ranks: kernels.RankInputs, interest, weight, k: int, n_items=None,
              item_scenes=None) -> np.ndarray:
        """Top-k for each row; ``n_items`` (per row) bounds the catalogue each row may see and
        ``item_scenes`` (uint32 scene bitmask per item index) restricts each row to its scene's items."""
        n = len(ranks.scene)
        out = np.full((n, k), -1, np.int32)
        if n_items is None:
            n_items = np.full(n, self.n_items, np.int32)
        if n_items.max() == 0:
            return out
        self.trainer.ensure_capacity(int(n_items.max()))
        params = self.params
        if item_scenes is not None:  # the kernel takes one bitmask per row of the item table
            capacity = params.item_emb.shape[0]
            table = np.zeros(capacity, np.uint32)
            table[:min(capacity, len(item_scenes))] = np.asarray(item_scenes, np.uint32)[:capacity]
            item_scenes = table
        step = self.cfg.buckets[-1]
        for start in range(0, n, step):
            stop = min(start + step, n)
            B = stop - start
            Bp = self.cfg.bucket(B)
            sub = kernels.RankInputs(*(getattr(ranks, f)[start:stop] for f in kernels.RankInputs._fields))
            # Exclusion lists vary in width; round up so the kernel sees few distinct shapes.
            width = 1 << int(np.ceil(np.log2(max(sub.exclude.shape[1], 1))))
            sub = sub._replace(exclude=np.pad(sub.exclude, ((0, 0), (0, width - sub.exclude.shape[1])),
                                              constant_values=-1))
            items, _ = kernels.rank(params, batching.pad(interest[start:stop].astype(np.float32), Bp, 0.0),
                                    batching.pad(weight[start:stop], Bp, 0.0), batching.pad_ranks(sub, Bp),
                                    batching.pad(n_items[start:stop], Bp, 0), item_scenes, k=k,
                                    chunk=self.cfg.item_chunk)
            out[start:stop] = np.asarray(items)[:B]
        return out

    def learn(self, users, items, types, scenes, ts) -> None:
        """Train on the history before each event, then fold the events into the users' states."""
        self.recommend_then_learn(users, items, types, scenes, ts, k=0)

    def recommend_then_learn(self, users, items, types, scenes, ts, k: int, exclude=None, *,
                             item_scenes=None) -> np.ndarray | None:
        """For each event, the top-``k`` list from the user's history just before it; then learn them all.

        Users may repeat within the batch: each event is ranked from its exact pre-event history
        (parameters and scene interests are those at the start of the batch, as between two
        snapshot reloads in the streaming workers). ``k=0`` only learns. ``exclude[j]`` / ``item_scenes``
        restrict event j's list as in :meth:`recommend`.
        """
        users = np.asarray(users, np.int64)
        if len(users) == 0:
            return np.zeros((0, k), np.int32) if k else None
        self._ensure_users(users)
        items = np.asarray(items, np.int32)
        active, dense = np.unique(users, return_inverse=True)
        sub = self.states[active]
        prepared = batching.prepare(sub, dense, items, np.asarray(types, np.int8),
                                    np.asarray(scenes, np.int8), np.asarray(ts, np.float64),
                                    self.cfg.n_scenes, with_examples=True)
        ex = prepared.examples
        recs = None
        if k:
            if len(self._mask_codes):
                masked = np.where(np.isin(ex.hist_type, self._mask_codes), ex.hist_item, -1)
            else:
                masked = np.full((len(users), 1), -1, np.int32)
            if exclude is not None:
                extra = np.full((len(users), max(1, max((len(e) for e in exclude), default=1))), -1, np.int32)
                for row, banned in enumerate(exclude):
                    extra[row, :len(banned)] = banned
                masked = np.concatenate([masked, extra], axis=1)
            ranks = kernels.RankInputs(hist_item=ex.hist_item, hist_type=ex.hist_type.astype(np.int32),
                                       hist_age=ex.hist_age, scene=ex.scene.astype(np.int32),
                                       exclude=masked.astype(np.int32))
            # The catalogue each event may see: every item that appeared before it (dense ids are
            # assigned in order of first appearance, so that is a prefix of the index range).
            seen_before = np.maximum.accumulate(np.r_[self.n_items - 1, items[:-1]]) + 1
            if item_scenes is not None:
                item_scenes = np.asarray(item_scenes, np.uint32)[:int(seen_before.max())]
            recs = self._rank(ranks, ex.interest, ex.weight, k, seen_before.astype(np.int32), item_scenes)
        self.n_items = max(self.n_items, int(items.max()) + 1)
        if self.n_items > len(self.seen):
            self.seen = np.r_[self.seen,
                              np.zeros(max(self.n_items, 2 * len(self.seen)) - len(self.seen), bool)]
        self.seen[items] = True
        self.trainer.learn(ex, self.n_items)
        self.trainer.ensure_capacity(self.n_items)
        B, E, S = len(active), len(users), self.cfg.n_scenes
        Bp, Ep = self.cfg.bucket(B), self.cfg.bucket(E)
        interest, weight = kernels.fold(self.params,
                                        batching.pad(sub["interest"].astype(np.float32), Bp, 0.0),
                                        batching.pad(sub["interest_weight"], Bp, 0.0),
                                        batching.pad_fold(prepared.fold, Bp, Ep, S),
                                        gamma=self.cfg.interest_decay)
        sub["interest"] = np.asarray(interest)[:B].astype(np.float16)
        sub["interest_weight"] = np.asarray(weight)[:B]
        self.states[active] = sub
        return recs

    def fit(self, log: EventLog, progress: bool = False) -> None:
        """Offline bootstrap: ``epochs`` online passes over ``log`` (states rebuilt each pass)."""
        from tqdm import tqdm

        bounds = np.unique(np.r_[np.arange(0, len(log), self.batch), len(log)])
        with tqdm(total=self.epochs * len(log), unit="ev", desc=f"fit {log.name}",
                  disable=not progress) as bar:
            for _ in range(self.epochs):
                self.states = self.codec.decode([None] * max(len(self.states), log.n_users))
                for start, stop in zip(bounds[:-1], bounds[1:]):
                    self.learn(log.user[start:stop], log.item[start:stop], log.type[start:stop],
                               log.scene[start:stop], log.ts[start:stop])
                    bar.update(stop - start)


def for_log(log: EventLog, **overrides) -> AttentionRecommender:
    """The model sized for a dataset's scenes (evaluation factory)."""
    scenes = ("default",) + tuple(log.scene_names[1:])  # scene codes are positions; the first is the default
    cfg = EngineConfig(scenes=scenes,
                       initial_capacity=max(1024, 1 << int(np.ceil(np.log2(max(log.n_items, 1))))),
                       buckets=(32, 128, 512, 2048), max_batch=2048)
    # one seed for both: the item vectors' initial values and the trainer's draws
    both = {"seed": overrides.pop("seed")} if "seed" in overrides else {}
    train = TrainConfig(**both, **{k: overrides.pop(k) for k in list(overrides)
                                   if k in TrainConfig.__dataclass_fields__})
    cfg = replace(cfg, **both, **{k: overrides.pop(k) for k in list(overrides)
                                  if k in EngineConfig.__dataclass_fields__})
    return AttentionRecommender(cfg, train, **overrides)


def publish_bootstrap(model: AttentionRecommender, log: EventLog, store) -> int:
    """Publish a model trained offline on ``log`` as the next parameter snapshot in ``store``.

    The log's items are registered in the store's shared catalogue first, and the embedding rows
    are permuted to the store's indices, so a running pipeline scores them under the same ids.
    """
    from models.params import COUNTED, capacity_for, grow, to_bytes

    index = np.asarray(store.item_index(list(log.item_ids)), np.int64)
    params = model.trainer.params
    capacity = capacity_for(max(int(index.max()) + 1, store.n_items()), model.cfg.initial_capacity)
    params = grow(params, capacity, model.cfg.seed)
    moved = {}
    for name in ("item_emb", "item_bias") + COUNTED:  # every per-item row, at the store's index
        rows = np.array(getattr(params, name))
        rows[index] = np.asarray(getattr(params, name))[: len(index)]
        moved[name] = rows
    # transition neighbours name items too: their ids move the same way
    successor = moved["nbr_item"]
    successor_index = index[np.clip(successor, 0, len(index) - 1)]
    moved["nbr_item"] = np.where(successor >= 0, successor_index, -1).astype(np.int32)
    params = params._replace(**{name: jnp.asarray(value) for name, value in moved.items()})
    meta = {"source": f"bootstrap:{log.name}", "events": len(log), "epochs": model.epochs,
            "steps": model.trainer.steps, "loss": model.trainer.last_loss, "n_items": store.n_items()}
    return store.publish_params(to_bytes(params, meta))
