"""Slow, obvious NumPy versions of the kernels, one user and one event at a time.

The tests compare ``models.kernels`` against these; the benchmarks use them as the baseline.
"""
from __future__ import annotations

import numpy as np

from models.params import Params


def _np(params: Params) -> dict:
    return {name: np.asarray(value, np.float64) if np.asarray(value).dtype.kind == "f" else np.asarray(value)
            for name, value in params._asdict().items()}


def _softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def fold_interests(params: Params, interest, weight, events, gamma):
    """Apply events one by one: ``I <- (W*g*I + c*e) / (W*g + c)`` with ``c = w(type)``, per scene.

    ``events`` is a list of ``(user_row, scene, item, type)`` in time order.
    """
    p = _np(params)
    interest = np.array(interest, np.float64)
    weight = np.array(weight, np.float64)
    for b, s, item, etype in events:
        c = np.exp(p["type_logit"][etype])
        kept = weight[b, s] * gamma
        interest[b, s] = (interest[b, s] * kept + c * p["item_emb"][item]) / (kept + c)
        weight[b, s] = kept + c
    return interest, weight


def user_vector(params: Params, interest, weight, hist_item, hist_type, hist_age, scene):
    """The attention query vector for one user and its attention weights over the history
    (see ``models.kernels.user_vectors``)."""
    p = _np(params)
    d = p["item_emb"].shape[1]
    L = len(hist_item)
    newest = np.zeros(d)
    if hist_item[-1] >= 0:
        newest = p["item_emb"][hist_item[-1]] + p["type_emb"][hist_type[-1]]
    q = (newest + p["scene_query"][scene]) @ p["w_query"]
    logits, values, slots = [], [], []
    for j in range(L):
        if hist_item[j] < 0:
            continue
        slots.append(j)
        h = p["item_emb"][hist_item[j]] + p["type_emb"][hist_type[j]]
        key = (h + p["pos_emb"][j]) @ p["w_key"]
        logits.append(q @ key / np.sqrt(d) + p["type_logit"][hist_type[j]]
                      - _softplus(p["decay"]) * np.log1p(max(hist_age[j], 0.0) / 3600.0))
        values.append(h @ p["w_value"])
    pooled = np.zeros(d)
    attn = np.zeros(L)
    if logits:
        a = np.exp(np.array(logits) - max(logits))
        attn[slots] = a / a.sum()
        pooled = attn[slots] @ np.array(values)
    transfer = np.zeros(d)
    scenes = [s for s in range(len(weight)) if weight[s] > 0]
    if scenes:
        r = np.array([q @ interest[s] / np.sqrt(d) for s in scenes])
        beta = np.exp(r - r.max())
        transfer = (beta / beta.sum()) @ interest[scenes]
    gate = 1.0 / (1.0 + np.exp(-p["transfer"]))
    return newest + pooled + gate * transfer, attn


def neighbour_scores(params: Params, hist_item, scene) -> dict:
    """Item -> summed transition evidence for one user (see ``models.kernels.neighbour_pairs``): the
    successors of the W newest history items (table 0) and of the W newest ones in ``scene`` (table 1)."""
    p = _np(params)
    tables, W = p["nbr_gain"].shape
    gate = 2.0 / (1.0 + np.exp(-p["transfer"]))
    in_scene = [j for j, item in enumerate(hist_item) if item >= 0
                and (int(p["item_scene_bits"][item]) >> scene) & 1]
    sources = ([j for j, item in enumerate(hist_item) if item >= 0], in_scene)
    out: dict = {}
    for table in range(tables):
        for d, j in enumerate(sorted(sources[table], reverse=True)[:W]):
            source = hist_item[j]
            gain = _softplus(p["nbr_gain"][table, d]) * (1.0 if table == 1 or j in in_scene else gate)
            for item, share in zip(p["nbr_item"][source, table], p["nbr_weight"][source, table]):
                if item >= 0:
                    out[int(item)] = out.get(int(item), 0.0) + gain * share
    return out


def top_k(params: Params, user, n_items, exclude, k, hist_item=(), scene=None):
    """Exact top-k over the first ``n_items`` items, excluded ones skipped; ties by lower index.

    Scores: ``u . e_i + b_i + sum_p pop_gain[p] log1p(pop[i, p])``; history items get the repeat
    score ``(copy + copy_offset) * exp(-steps_back / tau)`` on top, and given ``scene`` the neighbours
    of the history get ``(nbr_scale + nbr_offset) * log1p`` of their transition evidence
    (``neighbour_scores``).
    """
    p = _np(params)
    scores = (p["item_emb"][:n_items] @ user + p["item_bias"][:n_items]
              + np.log1p(p["pop"][:n_items]) @ (p["pop_gain"] + p["pop_offset"]))
    if scene is not None:
        for item, score in neighbour_scores(params, hist_item, scene).items():
            if item < n_items:
                scores[item] += (p["nbr_scale"] + p["nbr_offset"]) * np.log1p(score)
    L = len(hist_item)
    tau = 1.0 + _softplus(p["copy_tau"])
    for j, item in enumerate(hist_item):
        if 0 <= item < n_items:
            scores[item] += (p["copy"] + p["copy_offset"]) * np.exp(-(L - 1 - j) / tau)
    scores[[e for e in exclude if 0 <= e < n_items]] = -np.inf
    order = sorted(range(n_items), key=lambda i: (-scores[i], i))[:k]
    order = [i for i in order if np.isfinite(scores[i])]
    return np.array(order + [-1] * (k - len(order))), np.array([scores[i] for i in order])
