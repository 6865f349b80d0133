"""Shape and behaviour of the attention engine: the dimensions every state, kernel and snapshot agrees on.

A frozen dataclass, built by ``streams.settings.Settings`` for the workers and by the evaluator offline.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.events import DEFAULT_SCENE, EVENT_TYPES


MAX_SCENES = 32


@dataclass(frozen=True)
class EngineConfig:
    """Dimensions and policies of the attention engine.

    >>> cfg = EngineConfig(dim=8, history=4, scenes=("default", "search"), k=3)
    >>> cfg.scene_code("search"), cfg.n_scenes
    (1, 2)
    """

    dim: int = 64
    history: int = 50
    scenes: tuple[str, ...] = (DEFAULT_SCENE, "home", "search", "product")
    k: int = 20
    # Per-event decay of a scene's interest vector (an exponentially weighted mean of its items).
    interest_decay: float = 0.9
    # Items the user already did one of these to are never recommended back to them.
    mask_types: tuple[str, ...] = ()
    # Users per kernel call are padded to one of these sizes so nothing recompiles while the
    # pipeline runs; start-up compiles the ones a batch of ``max_batch`` events can use. Scoring
    # cost grows with the padded user count, so the steps are fine (powers of two and 1.5x between
    # them): a live batch of 333 users costs a 384-row call, not a 512-row one, and no call pads
    # by more than a third.
    buckets: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
                                3072, 4096, 6144, 8192)
    max_batch: int = 512
    # Catalogue scoring is chunked above this many items so B x N scores never materialise at once.
    item_chunk: int = 0  # 0: the backend's default (models.kernels.AUTO_CHUNK)
    initial_capacity: int = 16384
    seed: int = 0
    # Stored states of this earlier layout ("history=50 dim=64 k=20 scenes=default,home", keys left out
    # are this config's) are converted on read (models.state.migrate); "" = any other layout is refused.
    previous_layout: str = ""
    # Catalogues of more than ``candidates_above`` items are ranked by the candidate stage
    # (models.candidates): an IVF index over the item vectors proposes ``candidates`` items per user,
    # ``candidates_nprobe`` of its ``candidates_lists`` cells searched (0: about 2 sqrt(items)), and the
    # exact score re-ranks them with the history's own items; 0 = always the exact scan.
    candidates_above: int = 0
    candidates: int = 512
    candidates_nprobe: int = 64
    candidates_lists: int = 0
    candidates_threads: int = 1
    # Each list carries its explanation (models.explain: this many most-attended history events and the
    # scene interests' weights); 0 = off.
    explain_events: int = 0

    def __post_init__(self):
        if not self.scenes or self.scenes[0] != DEFAULT_SCENE:
            raise ValueError(f"scenes must start with {DEFAULT_SCENE!r}, got {self.scenes!r}")
        unknown = set(self.mask_types) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"mask_types has unknown event types {sorted(unknown)}; known: {EVENT_TYPES}")
        if len(self.scenes) > MAX_SCENES:
            raise ValueError(f"at most {MAX_SCENES} scenes are supported (an item's scenes are "
                             "one 32-bit mask)")
        if self.max_batch > self.buckets[-1]:
            raise ValueError(f"max_batch {self.max_batch} exceeds the largest bucket {self.buckets[-1]}")
        for name, value in (("dim", self.dim), ("history", self.history), ("k", self.k)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

    @property
    def n_scenes(self) -> int:
        return len(self.scenes)

    def bucket(self, n: int) -> int:
        """Smallest bucket that holds ``n`` rows.

        >>> EngineConfig().bucket(9), EngineConfig().bucket(150)
        (12, 192)
        """
        for size in self.buckets:
            if n <= size:
                return size
        raise ValueError(f"{n} rows exceed the largest bucket {self.buckets[-1]}")

    def scene_code(self, scene: str) -> int:
        """Index of a configured scene; ``KeyError`` for one that is not configured."""
        try:
            return self.scenes.index(scene)
        except ValueError:
            raise KeyError(scene) from None
