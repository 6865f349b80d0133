"""Readable explanations of ranked lists (opt-in, ``ATTNFLOW_EXPLAIN``): the history events the model
attended to most and the weight each scene interest had in the query. Pure: arrays in, dicts out."""
from __future__ import annotations

import jax
import numpy as np

from models import batching, kernels
from models.events import EVENT_TYPES
from models.params import Params


def explanations(params: Params, interest: np.ndarray, weight: np.ndarray, ranks: kernels.RankInputs,
                 names: np.ndarray, scenes: tuple[str, ...], events: int, bucket: int) -> list[dict]:
    """One explanation per row of ``ranks``: ``{"history": [{item_id, type, age_s, attention}, ...]``
    (the ``events`` history events with the largest attention weight, largest first), ``"scene_interest":
    {scene: weight}`` (scenes the user has an interest in), ``"transfer"``: the gate on the scene interests.

    ``interest``/``weight``: the users' scene interests after folding, as ranked; ``names``: item ids by
    index; ``bucket``: the padded batch size (one compiled kernel per bucket, as for ``kernels.step``).

    >>> from models.config import EngineConfig
    >>> from models.params import init_params
    >>> cfg = EngineConfig(dim=4, history=3, scenes=("default", "search"), k=2)
    >>> ranks = kernels.RankInputs(hist_item=np.array([[-1, 0, 1]], np.int32),
    ...     hist_type=np.array([[0, 0, 1]], np.int32), hist_age=np.array([[0, 60, 5]], np.float32),
    ...     scene=np.array([1], np.int32), exclude=np.full((1, 1), -1, np.int32))
    >>> interest, weight = np.ones((1, 2, 4), np.float32), np.array([[1.0, 0.0]], np.float32)
    >>> doc = explanations(init_params(cfg, capacity=2), interest, weight, ranks,
    ...                    np.array(["a", "b"], object), cfg.scenes, events=3, bucket=8)[0]
    >>> sorted(e["item_id"] for e in doc["history"]), list(doc["scene_interest"])
    (['a', 'b'], ['default'])
    """
    B = len(ranks.scene)
    slot, attention, beta, gate = jax.device_get(kernels.explain(
        params, batching.pad(interest.astype(np.float32), bucket, 0.0), batching.pad(weight, bucket, 0.0),
        batching.pad_ranks(ranks, bucket), events=events))
    slot, attention, beta = slot[:B], attention[:B], beta[:B]
    rows = np.arange(B)[:, None]
    items, types, ages = ranks.hist_item[rows, slot], ranks.hist_type[rows, slot], ranks.hist_age[rows, slot]
    out = []
    for b in range(B):
        history = [{"item_id": names[items[b, j]] if items[b, j] < len(names) else None,
                    "type": EVENT_TYPES[types[b, j]],
                    "age_s": round(float(ages[b, j]), 3), "attention": round(float(attention[b, j]), 4)}
                   for j in range(slot.shape[1]) if items[b, j] >= 0 and attention[b, j] > 0]
        scene_interest = {scenes[s]: round(float(beta[b, s]), 4) for s in range(len(scenes))
                          if weight[b, s] > 0}
        out.append({"history": history, "scene_interest": scene_interest, "transfer": round(float(gate), 4)})
    return out
