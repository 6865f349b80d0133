"""pCTR from the attention score: a click probability learned online from what users did with the lists
they were shown, and how reliable it is.

``ScoreCalibrator`` keeps decayed (impressions, clicks, summed score) per bin of the score (bins on
``tanh(score / scale)``, so any score range has resolution where the scores are), and fits Platt scaling
``p = sigmoid(a * score + b)`` to them by Newton steps with a prior at the base rate, or isotonic
regression over the bins (pool adjacent violators). Its reliability (predicted vs observed by bin of the
prediction, expected calibration error) is measured prequentially: each impression is scored before it
is learned from.

Its memory is fixed by ``bins``, whatever the traffic: three decayed counts per score bin, the isotonic
table and ten reliability bins (6.2 KiB per worker at 256 bins, 8.2 KiB isotonic). It keys nothing by
user, item or campaign, so no key set can grow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("platt", "isotonic")
RELIABILITY_EDGES = np.array([0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def pav(rate: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Isotonic (non-decreasing) fit of ``rate`` with ``weight``s: pool adjacent violators.

    >>> pav(np.array([0.1, 0.3, 0.2, 0.4]), np.array([1.0, 1.0, 1.0, 2.0])).round(3).tolist()
    [0.1, 0.25, 0.25, 0.4]
    """
    values, weights, sizes = [], [], []
    for r, w in zip(rate.tolist(), weight.tolist()):
        values.append(r); weights.append(w); sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w2 = weights[-2] + weights[-1]
            v = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w2 if w2 > 0 else values[-1]
            size = sizes[-2] + sizes[-1]
            del values[-1], weights[-1], sizes[-1]
            values[-1], weights[-1], sizes[-1] = v, w2, size
    return np.repeat(values, sizes)


@dataclass
class ScoreCalibrator:
    """Online click probability of an impression from its attention score.

    >>> rng = np.random.default_rng(0)
    >>> cal = ScoreCalibrator(prior_ctr=0.05)
    >>> for _ in range(50):
    ...     s = rng.normal(0, 2, 2000); cal.update(s, rng.random(2000) < 1 / (1 + np.exp(-(1.5 * s - 3))))
    >>> np.round([cal.a, cal.b], 1).tolist(), cal.reliability()["ece"] < 0.01
    ([1.5, -3.0], True)
    """

    prior_ctr: float = 0.01
    method: str = "platt"
    bins: int = 256
    scale: float = 10.0
    half_life: float = 200_000.0   # impressions after which an observation counts half
    prior_weight: float = 50.0     # impressions' worth of the prior (pCTR = prior_ctr, flat in the score)
    a: float = 0.0
    b: float = field(default=0.0)
    _n: np.ndarray = field(default=None, repr=False)
    _clicks: np.ndarray = field(default=None, repr=False)
    _score: np.ndarray = field(default=None, repr=False)
    _iso: np.ndarray | None = field(default=None, repr=False)
    _rel: np.ndarray = field(default=None, repr=False)   # [edges-1, 3] impressions, summed prediction, clicks

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; "
                             f"expected one of {', '.join(METHODS)}")
        self.b = float(np.log(self.prior_ctr / (1 - self.prior_ctr)))
        self._n, self._clicks, self._score = np.zeros(self.bins), np.zeros(self.bins), np.zeros(self.bins)
        self._rel = np.zeros((len(RELIABILITY_EDGES) - 1, 3))

    def _bin(self, scores: np.ndarray) -> np.ndarray:
        z = np.tanh(np.asarray(scores, np.float64) / self.scale)
        return np.clip(((z + 1) / 2 * self.bins).astype(np.int64), 0, self.bins - 1)

    def predict(self, scores) -> np.ndarray:
        """pCTR of impressions with these attention scores (any shape)."""
        scores = np.asarray(scores, np.float64)
        if self.method == "isotonic" and self._iso is not None:
            return self._iso[self._bin(scores)]
        return _sigmoid(self.a * scores + self.b)

    def update(self, scores, clicked) -> None:
        """Learn from impressions (``scores``) and whether each was clicked; records reliability first."""
        scores, clicked = np.ravel(np.asarray(scores, np.float64)), np.ravel(np.asarray(clicked, np.float64))
        if not len(scores):
            return
        predicted = self.predict(scores)
        at = np.clip(np.searchsorted(RELIABILITY_EDGES, predicted, side="right") - 1, 0, len(self._rel) - 1)
        np.add.at(self._rel, at, np.stack([np.ones_like(predicted), predicted, clicked], axis=1))
        keep = 0.5 ** (len(scores) / self.half_life)
        self._n *= keep; self._clicks *= keep; self._score *= keep
        at = self._bin(scores)
        np.add.at(self._n, at, 1.0); np.add.at(self._clicks, at, clicked); np.add.at(self._score, at, scores)
        self._fit()

    def _fit(self) -> None:
        used = self._n > 0
        n, c = self._n[used], self._clicks[used]
        s = self._score[used] / n
        b0 = np.log(self.prior_ctr / (1 - self.prior_ctr))
        # the prior's curvature, as impressions
        lam = self.prior_weight * self.prior_ctr * (1 - self.prior_ctr)

        def loss(a, b):
            z = a * s + b
            return float(np.sum(n * np.logaddexp(0, z) - c * z) + lam / 2 * (a * a + (b - b0) ** 2))

        a, b = self.a, self.b
        current = loss(a, b)
        for _ in range(30):  # Newton steps, halved until the loss goes down (plain Newton can overshoot)
            p = _sigmoid(a * s + b)
            g = np.array([np.sum((n * p - c) * s) + lam * a, np.sum(n * p - c) + lam * (b - b0)])
            w = n * p * (1 - p)
            h = np.array([[np.sum(w * s * s) + lam, np.sum(w * s)], [np.sum(w * s), np.sum(w) + lam]])
            step = np.linalg.solve(h, g)
            for _ in range(30):
                trial = loss(a - step[0], b - step[1])
                if trial <= current:
                    break
                step = step / 2
            else:
                break
            a, b, current = a - step[0], b - step[1], trial
            if np.abs(step).max() < 1e-7:
                break
        self.a, self.b = float(a), float(b)
        if self.method == "isotonic":
            k = self.prior_weight / self.bins
            rate = (self._clicks + k * _sigmoid(self.a * self._bin_centres() + self.b)) / (self._n + k)
            self._iso = pav(rate, self._n + k)

    def _bin_centres(self) -> np.ndarray:
        z = (np.arange(self.bins) + 0.5) / self.bins * 2 - 1
        return self.scale * np.arctanh(np.clip(z, -0.999999, 0.999999))

    @property
    def nbytes(self) -> int:
        """Bytes of the calibrator's arrays: fixed by ``bins``, the same after any number of updates.

        >>> cal = ScoreCalibrator(method="isotonic")
        >>> cal.update(np.linspace(-30, 30, 10_000), np.ones(10_000))
        >>> cal.nbytes == ScoreCalibrator(method="isotonic").nbytes + 256 * 8
        True
        """
        iso = (self._iso,) if self._iso is not None else ()
        arrays = (self._n, self._clicks, self._score, self._rel) + iso
        return sum(a.nbytes for a in arrays)

    def reliability(self) -> dict:
        """Prequential reliability: per bin of the predicted pCTR, impressions, mean prediction and observed
        click rate; ``ece`` weighs each bin's |prediction - observation| by its impressions."""
        n, predicted, clicks = self._rel.T
        total = n.sum()
        rows = [{"bin": [float(lo), float(hi)], "impressions": int(k), "predicted": float(p / k),
                 "observed": float(c / k)}
                for lo, hi, k, p, c in zip(RELIABILITY_EDGES[:-1], RELIABILITY_EDGES[1:], n, predicted,
                                           clicks) if k]
        ece = float(np.sum(np.abs(predicted - clicks)) / total) if total else None
        return {"method": self.method, "impressions": int(total), "clicks": int(clicks.sum()), "ece": ece,
                "platt": {"a": self.a, "b": self.b}, "bins": rows, "memory_bytes": self.nbytes}
