"""``MemoryStore``: the store in process memory, with ``RedisStore``'s semantics (fences included), for
tests, benchmarks and offline runs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from models.store.records import BatchRead, MarketRead, PopularityWindows, fence_of, shown_fence

@dataclass
class MemoryStore:
    """In-process store with the same semantics as :class:`RedisStore` (fences included).

    >>> store = MemoryStore()
    >>> store.item_index(["a", "b", "a"])
    [0, 1, 0]
    """

    states: dict = field(default_factory=dict)
    catalog: dict = field(default_factory=dict)
    ids: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)
    version: int = 0
    scene_log: list = field(default_factory=list)
    popularity: PopularityWindows = field(default_factory=PopularityWindows)
    scene_windows: dict = field(default_factory=dict)  # (scene, window) -> {item index: events}
    market: dict = field(default_factory=dict)  # campaigns, shown lists, spend, ledger (put_campaigns ...)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ping(self) -> bool:
        return True

    def read_batch(self, users: list[str], new_item_ids: list[str]) -> BatchRead:
        index = self.item_index(new_item_ids)
        return BatchRead(states=[self.states.get(u) for u in users], item_index=index, n_items=len(self.ids),
                         params_version=self.version, catalogue_version=len(self.scene_log))

    def write_states(self, users: list[str], values: list[bytes],
                     scene_counts: list[tuple[str, int, int]] | None = None) -> list[bool]:
        if scene_counts:
            self.count_scene_items(scene_counts)
        written = []
        with self._lock:
            for user, value in zip(users, values):
                current = self.states.get(user)
                ok = True
                if current is not None:
                    (cp, co, ci), (np_, no, ni) = fence_of(current), fence_of(value)
                    ok = not (cp == np_ and (co, ci) >= (no, ni))
                if ok:
                    self.states[user] = value
                written.append(ok)
        return written

    def item_index(self, item_ids: list[str]) -> list[int]:
        with self._lock:
            out = []
            for item in item_ids:
                if item not in self.catalog:
                    self.catalog[item] = len(self.ids)
                    self.ids.append(item)
                out.append(self.catalog[item])
            return out

    def item_ids(self, start: int = 0) -> list[str]:
        return self.ids[start:]

    def n_items(self) -> int:
        return len(self.ids)

    def set_item_scenes(self, item_ids: list[str], masks: list[int]) -> int:
        for index, mask in zip(self.item_index(item_ids), masks):
            self.scene_log.append((index, int(mask)))
        return len(self.scene_log)

    def item_scene_changes(self, start: int = 0) -> list[tuple[int, int]]:
        return list(self.scene_log[start:])

    def catalogue_version(self) -> int:
        return len(self.scene_log)

    def publish_params(self, blob: bytes) -> int:
        self.version += 1
        self.snapshots[self.version] = blob
        return self.version

    def params_version(self) -> int:
        return self.version

    def load_params(self, version: int) -> bytes | None:
        return self.snapshots.get(version)

    def read_state(self, user_id: str) -> bytes | None:
        return self.states.get(user_id)

    # ---- serving: scene popularity (as RedisStore's, without the expiry) -----------------------------

    def count_scene_items(self, counts: list[tuple[str, int, int]], now: float | None = None) -> None:
        window = self.popularity.window(time.time() if now is None else now)
        with self._lock:
            for scene, item, n in counts:
                counted = self.scene_windows.setdefault((scene, window), {})
                counted[item] = counted.get(item, 0) + n
            for scene in {scene for scene, _, _ in counts}:
                counted = self.scene_windows[(scene, window)]
                if len(counted) > self.popularity.keep:
                    by_count = sorted(counted.items(), key=lambda pair: pair[1], reverse=True)
                    kept = by_count[:self.popularity.keep]
                    self.scene_windows[(scene, window)] = dict(kept)

    def scene_popularity(self, scenes: list[str], limit: int,
                         now: float | None = None) -> dict[str, list[tuple[int, float]]]:
        latest = self.popularity.window(time.time() if now is None else now)
        out = {}
        with self._lock:
            for scene in scenes:
                summed: dict[int, float] = {}
                for window in range(latest - self.popularity.windows + 1, latest + 1):
                    for item, n in self.scene_windows.get((scene, window), {}).items():
                        summed[item] = summed.get(item, 0.0) + n
                out[scene] = sorted(summed.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]
        return out

    # ---- the attention market (as RedisStore's) ----------------------------------------------------

    def put_campaigns(self, docs: dict[str, bytes]) -> int:
        with self._lock:
            self.market.setdefault("campaigns", {}).update(docs)
            self.market["version"] = self.market.get("version", 0) + 1
            return self.market["version"]

    def campaigns(self) -> tuple[int, dict[str, bytes]]:
        with self._lock:
            return self.market.get("version", 0), dict(self.market.get("campaigns", {}))

    def read_market(self, users: list[str], spend_of: list[tuple[str, int]]) -> MarketRead:
        with self._lock:
            shown = self.market.setdefault("shown", {})
            spend = self.market.setdefault("spend", {})
            return MarketRead(self.market.get("version", 0), [shown.get(u) for u in users],
                              [spend.get(key, {}).get("spend", 0) for key in spend_of])

    def write_market(self, users: list[str], shown: list[bytes], charges) -> tuple[list[bool], list[int]]:
        with self._lock:
            stored, spends = self.market.setdefault("shown", {}), self.market.setdefault("spend", {})
            ledger = self.market.setdefault("ledger", [])
            written = []
            for user, value in zip(users, shown):
                current = stored.get(user)
                (cp, co, ci), (np_, no, ni) = shown_fence(current or value), shown_fence(value)
                ok = current is None or cp != np_ or (co, ci) < (no, ni)
                if ok:
                    stored[user] = value
                written.append(ok)
            charged = []
            for campaign, day, charge_id, price, budget, record in charges:
                spend = spends.setdefault((campaign, day), {"spend": 0})
                amount = 0
                if charge_id not in spend:
                    amount = max(min(price, budget - spend["spend"]), 0)
                    spend[charge_id] = amount
                    spend["spend"] += amount
                    ledger.append(f"{amount}:".encode() + record)
                charged.append(amount)
            return written, charged

    def ledger_entries(self, start: int, limit: int) -> list[bytes]:
        with self._lock:
            return list(self.market.get("ledger", [])[start:start + limit])

    def ledger_published(self) -> int:
        return self.market.get("published", 0)

    def advance_ledger(self, to: int) -> int:
        with self._lock:
            self.market["published"] = max(self.market.get("published", 0), to)
            return self.market["published"]

    def spend(self, campaign_id: str, day: int) -> int:
        return self.market.get("spend", {}).get((campaign_id, day), {}).get("spend", 0)

    def clear(self) -> int:
        n = len(self.states)
        for held in (self.states, self.catalog, self.ids, self.snapshots, self.scene_log, self.scene_windows):
            held.clear()
        self.market.clear()
        return n

    def close(self) -> None:
        pass
