"""Slow, obvious NumPy versions of the kernels, one user and one event at a time.

The tests compare ``models.kernels`` against these; the benchmarks use them as the baseline.
"""
from __future__ import annotations

import numpy as np

from models.params import Params


def _np(params: Params) -> dict:
    return {name: np.asarray(value, np.float64) for name, value in params._asdict().items()}


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


def top_k(params: Params, user, n_items, exclude, k, hist_item=()):
    """Exact top-k over the first ``n_items`` items, excluded ones skipped; ties by lower index.

    History items get the repeat score ``copy * exp(-steps_back / tau)`` on top.
    """
    p = _np(params)
    scores = p["item_emb"][:n_items] @ user + p["item_bias"][:n_items]
    L = len(hist_item)
    tau = 1.0 + _softplus(p["copy_tau"])
    for j, item in enumerate(hist_item):
        if 0 <= item < n_items:
            scores[item] += p["copy"] * np.exp(-(L - 1 - j) / tau)
    scores[[e for e in exclude if 0 <= e < n_items]] = -np.inf
    order = sorted(range(n_items), key=lambda i: (-scores[i], i))[:k]
    order = [i for i in order if np.isfinite(scores[i])]
    return np.array(order + [-1] * (k - len(order))), np.array([scores[i] for i in order])
