"""Where attention states, the item catalogue and parameter snapshots live: Redis, or memory for tests.

This module is the only place that knows Redis key names and Lua scripts. Every batch costs one
round trip to read (states + new item ids + the parameter version, pipelined) and one to write
(a fenced compare-and-set script). Both stores keep the same semantics so the engine cannot tell
them apart.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

import redis

from models.state import FENCE_SLICE

# Store outages a caller should wait out and retry: every store call here is idempotent.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)

# Compare-and-set of a batch of states. The fence (partition <i4, offset <i8) sits at bytes 5..16
# (Lua is 1-based) of every value; a write is skipped when the stored state is from the same
# partition at the same or a newer offset: a replayed event, or a zombie worker after a rebalance.
_WRITE_STATES = """
local written = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local np, no = struct.unpack('<i4i8', string.sub(new, 5, 16))
  local cur = redis.call('GETRANGE', key, 4, 15)
  local ok = 1
  if #cur == 12 then
    local cp, co = struct.unpack('<i4i8', cur)
    if cp == np and co >= no then ok = 0 end
  end
  if ok == 1 then redis.call('SET', key, new) end
  written[i] = ok
end
return written
"""

# Dense index of each item id, assigning the next free one to new ids. The list doubles as the
# counter and the reverse map (position == index); both keys share a hash tag for Redis Cluster.
_ITEM_INDEX = """
local out = {}
for i, id in ipairs(ARGV) do
  local idx = redis.call('HGET', KEYS[1], id)
  if not idx then
    idx = redis.call('RPUSH', KEYS[2], id) - 1
    redis.call('HSET', KEYS[1], id, idx)
  end
  out[i] = tonumber(idx)
end
return out
"""

_PUBLISH_PARAMS = """
local version = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2] .. version, ARGV[1])
redis.call('DEL', KEYS[2] .. (version - tonumber(ARGV[2])))
return version
"""


def fence_of(value: bytes) -> tuple[int, int]:
    """(partition, offset) written into a state value."""
    return struct.unpack("<iq", value[FENCE_SLICE])


@dataclass
class BatchRead:
    states: list[bytes | None]
    item_index: list[int]
    n_items: int
    params_version: int


class RedisStore:
    """Attention states, item catalogue and parameter snapshots in one Redis database.

    ``prefix`` namespaces every key so several pipelines (or test runs) can share a server.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "attnflow", keep_snapshots: int = 3):
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        # Every command here is idempotent (reads, fenced writes, get-or-assign), so retrying is safe.
        self.redis = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.prefix = prefix
        self.keep_snapshots = keep_snapshots
        self._write_states = self.redis.register_script(_WRITE_STATES)
        self._item_index = self.redis.register_script(_ITEM_INDEX)
        self._publish = self.redis.register_script(_PUBLISH_PARAMS)
        self._catalog = (f"{prefix}:{{catalog}}:index", f"{prefix}:{{catalog}}:ids")
        self._params = (f"{prefix}:params:version", f"{prefix}:params:snapshot:")

    def state_key(self, user_id: str) -> str:
        return f"{self.prefix}:state:{user_id}"

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def read_batch(self, users: list[str], new_item_ids: list[str]) -> BatchRead:
        """States of ``users``, indices of ``new_item_ids`` (assigned if new), catalogue size and snapshot
        version, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        if users:
            pipe.mget([self.state_key(u) for u in users])
        if new_item_ids:
            self._item_index(keys=self._catalog, args=new_item_ids, client=pipe)
        pipe.llen(self._catalog[1])
        pipe.get(self._params[0])
        replies = pipe.execute()
        states = replies.pop(0) if users else []
        index = [int(i) for i in replies.pop(0)] if new_item_ids else []
        return BatchRead(states=states, item_index=index, n_items=int(replies[0]),
                         params_version=int(replies[1] or 0))

    def write_states(self, users: list[str], values: list[bytes]) -> list[bool]:
        """Fenced compare-and-set of a batch; ``False`` where a newer state was already stored."""
        if not users:
            return []
        written = self._write_states(keys=[self.state_key(u) for u in users], args=values)
        return [bool(w) for w in written]

    def item_index(self, item_ids: list[str]) -> list[int]:
        return self.read_batch([], item_ids).item_index

    def item_ids(self, start: int = 0) -> list[str]:
        """External ids of items ``start..`` in index order."""
        return [v.decode() for v in self.redis.lrange(self._catalog[1], start, -1)]

    def n_items(self) -> int:
        return int(self.redis.llen(self._catalog[1]))

    def publish_params(self, blob: bytes) -> int:
        """Store a snapshot under the next version; keeps the last ``keep_snapshots``."""
        return int(self._publish(keys=self._params, args=[blob, self.keep_snapshots]))

    def params_version(self) -> int:
        return int(self.redis.get(self._params[0]) or 0)

    def load_params(self, version: int) -> bytes | None:
        return self.redis.get(f"{self._params[1]}{version}")

    def read_state(self, user_id: str) -> bytes | None:
        return self.redis.get(self.state_key(user_id))

    def clear(self) -> int:
        """Delete every key under this prefix (tests and ``attnflow reset``)."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start:start + 1000])
        return len(keys)

    def close(self) -> None:
        self.redis.close()


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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ping(self) -> bool:
        return True

    def read_batch(self, users: list[str], new_item_ids: list[str]) -> BatchRead:
        index = self.item_index(new_item_ids)
        return BatchRead(states=[self.states.get(u) for u in users], item_index=index, n_items=len(self.ids),
                         params_version=self.version)

    def write_states(self, users: list[str], values: list[bytes]) -> list[bool]:
        written = []
        with self._lock:
            for user, value in zip(users, values):
                current = self.states.get(user)
                ok = True
                if current is not None:
                    (cp, co), (np_, no) = fence_of(current), fence_of(value)
                    ok = not (cp == np_ and co >= no)
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

    def clear(self) -> int:
        n = len(self.states)
        self.states.clear(); self.catalog.clear(); self.ids.clear(); self.snapshots.clear()
        return n

    def close(self) -> None:
        pass
