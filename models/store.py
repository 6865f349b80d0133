"""Where attention states, the item catalogue and parameter snapshots live: Redis (one server or a
Redis Cluster), or memory for tests.

This module is the only place that knows Redis key names, Lua scripts and how to connect. Every batch
costs one round trip to read (states + new item ids + the parameter version, pipelined) and one to
write (a fenced compare-and-set script); on a cluster, one round trip per node that holds the batch's
keys. Both stores keep the same semantics so the engine cannot tell them apart.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import numpy as np
import redis
from redis.cluster import ClusterNode, RedisCluster, key_slot

from models.state import FENCE_INDEX_SLICE, FENCE_SLICE

log = logging.getLogger(__name__)

# Store outages a caller should wait out and retry: every store call here is idempotent. On a cluster
# a failover shows as these too (the slot's master is gone until a replica is promoted).
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                    redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                    redis.exceptions.MasterDownError, redis.exceptions.ReadOnlyError,
                    # what the cluster client raises while it cannot reach any node to refresh its slot map
                    redis.exceptions.RedisClusterException)
# The store refusing us (wrong password, an ACL without a needed command or key): no event is to blame
# and none would fare better, so a worker stops with the error instead of dead-lettering its traffic.
FATAL_STORE_ERRORS = (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError,
                      redis.exceptions.AuthenticationWrongNumberOfArgsError)
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


class ReplicationLag(redis.ConnectionError):
    """A write was not confirmed by ``wait_replicas`` replicas in time: retried like an outage, so a
    batch is acknowledged to Kafka only once its states would survive the loss of their master."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors.

    >>> redacted("redis://worker:s3cret@10.0.0.1:6379/0")
    'redis://worker:***@10.0.0.1:6379/0'
    >>> redacted("redis+cluster://127.0.0.1:7001,127.0.0.1:7002")
    'redis+cluster://127.0.0.1:7001,127.0.0.1:7002'
    """
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    user = parsed.username or ""
    return url.replace(f"{parsed.netloc.split('@')[0]}@", f"{user}:***@", 1)


# Every command the store (and redis-py's connection and cluster discovery) sends, scripts' own calls
# included: the least a worker's Redis ACL user needs. (redis-py sends CLIENT SETINFO too, and
# goes on without it when refused; Redis 7.0 does not know it, so an ACL naming it would fail there.)
WORKER_COMMANDS = (
    "get", "mget", "set", "getrange", "exists", "del", "rename", "scan", "llen", "lrange", "rpush", "hget", "hset",
    "incr", "evalsha", "eval", "script|load", "script|exists", "wait", "ping", "info", "command", "readonly",
    "zincrby", "zremrangebyrank", "expire", "zunion",  # scene popularity (count and read, see below)
    "hgetall", "hexists", "hincrby", "multi", "exec",  # the attention market (campaigns, spend, ledger)
    "client|setname", "cluster|slots", "cluster|shards", "cluster|nodes", "cluster|info", "cluster|myid")


def worker_acl(user: str, password: str, prefix: str) -> list[str]:
    """``ACL SETUSER`` arguments for a worker: its own key prefix and the commands above, nothing else.

    >>> " ".join(worker_acl("w", "pw", "attnflow")[:6])
    'w reset on >pw ~attnflow:* resetchannels'
    """
    return [user, "reset", "on", f">{password}", f"~{prefix}:*", "resetchannels", "-@all",
            *(f"+{command}" for command in WORKER_COMMANDS)]


def connect(url: str, **options) -> redis.Redis | RedisCluster:
    """A client for ``url``: ``redis://`` / ``rediss://`` (TLS) for one server, or
    ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` with TLS) for
    a Redis Cluster, given any of its nodes. Query parameters (``?ssl_ca_certs=/ca.pem``) pass to
    redis-py as for ``redis.Redis.from_url``; ``options`` are client keyword arguments.

    >>> type(connect("redis+cluster://127.0.0.1:1", _probe=False)).__name__
    'RedisCluster'
    """
    scheme = url.split("://", 1)[0]
    if scheme not in CLUSTER_SCHEMES:
        return redis.Redis.from_url(url, **options)
    probe = options.pop("_probe", True)
    parsed = urlparse(url)
    query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
    credentials, _, hosts = parsed.netloc.rpartition("@")
    nodes = []
    for host_port in hosts.split(","):
        host, _, port = host_port.rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    if credentials:
        username, _, password = credentials.partition(":")
        options.update(username=unquote(username) or None, password=unquote(password) or None)
    if CLUSTER_SCHEMES[scheme]:
        options.update(ssl=True, **{k: v for k, v in query.items() if k.startswith("ssl_")})
    if not probe:  # a client object only (doctests): connecting is deferred
        return RedisCluster.__new__(RedisCluster)
    return RedisCluster(startup_nodes=nodes, **options)

# Compare-and-set of a batch of states. The fence (partition <i4, offset <i8) sits at bytes 5..16
# (Lua is 1-based) of every value, the event's index within its message (<u2) at bytes 35..36; a write
# is skipped when the stored state is from the same partition at the same or a newer (offset, index):
# a replayed event, or a zombie worker after a rebalance.
_WRITE_STATES = """
local written = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local np, no = struct.unpack('<i4i8', string.sub(new, 5, 16))
  local ni = struct.unpack('<I2', string.sub(new, 35, 36))
  local cur = redis.call('GETRANGE', key, 4, 35)
  local ok = 1
  if #cur == 32 then
    local cp, co = struct.unpack('<i4i8', string.sub(cur, 1, 12))
    local ci = struct.unpack('<I2', string.sub(cur, 31, 32))
    if cp == np and (co > no or (co == no and ci >= ni)) then ok = 0 end
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

# Per-scene catalogues: each change sets an item's scene bitmask (0: hidden everywhere) and is appended
# to a change log as "index:mask"; the log's length is the catalogue version every batch read returns,
# so a worker (or the serve process) fetches only the changes it has not applied. Unknown ids are
# assigned an index as in _ITEM_INDEX. Replaying a change is harmless: the last one for an item wins.
_SET_ITEM_SCENES = """
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local idx = redis.call('HGET', KEYS[1], id)
  if not idx then
    idx = redis.call('RPUSH', KEYS[2], id) - 1
    redis.call('HSET', KEYS[1], id, idx)
  end
  redis.call('RPUSH', KEYS[3], idx .. ':' .. ARGV[i + 1])
end
return redis.call('LLEN', KEYS[3])
"""

# Version counter and snapshots share the {params} hash tag: one script bumps the version and stores
# the snapshot under it atomically, on one server or on the cluster node that holds the tag's slot.
_PUBLISH_PARAMS = """
local version = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2] .. version, ARGV[1])
redis.call('DEL', KEYS[2] .. (version - tonumber(ARGV[2])))
return version
"""


# ---- serving: scene popularity ------------------------------------------------------------------
# What the request path (models.requests) answers an unknown user with. Rank workers count each applied
# event's (scene, item) into one sorted set per scene and time window (wall clock, ``window_s``), in
# the same round trip as their fenced state write; a read sums the newest ``windows`` windows. Counts
# are approximate: a zombie worker's refused batch is counted too, and each window keeps only its
# ``keep`` most counted items. All popularity keys share the {popularity} hash tag (one node).

# KEYS: one window key per scene touched; ARGV: ttl, keep, then per key: n, then n (member, count) pairs.
_COUNT_SCENE_ITEMS = """
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = 3
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  for j = 1, n do
    redis.call('ZINCRBY', key, ARGV[at + 2 * j], ARGV[at + 2 * j - 1])
  end
  at = at + 1 + 2 * n
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
end
return 1
"""

# KEYS: ``windows`` window keys per scene, scene after scene; ARGV: windows, limit. Per scene, the
# ``limit`` items with the largest summed count, as a flat list of member, count (largest first).
_SCENE_POPULARITY = """
local windows, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for first = 1, #KEYS, windows do
  local command = {'ZUNION', windows}
  for j = first, first + windows - 1 do command[#command + 1] = KEYS[j] end
  command[#command + 1] = 'WITHSCORES'
  local summed = redis.call(unpack(command))   -- ascending by count
  local top = {}
  local n = #summed / 2
  for i = n, math.max(1, n - limit + 1), -1 do
    top[#top + 1] = summed[2 * i - 1]
    top[#top + 1] = summed[2 * i]
  end
  out[#out + 1] = top
end
return out
"""


# ---- the attention market (models.market): campaigns, sponsored lists shown, spend and the ledger -------
# All market keys share the {market} hash tag (one node on a cluster). A charge is applied once per charge
# id (deterministic: models.market.book.charge_id), capped at the campaign's daily budget, and appended
# with what it charged to the ledger list in the same script, so spend always equals the ledger's sum.
# KEYS[1]: the ledger list, then one spend hash per charge; ARGV: ttl, then per charge: id, price, budget,
# record. Returns the micros charged per charge (0 for one already applied).
_CHARGE = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 4
  local id, price, budget = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  out[i - 1] = 0
  if redis.call('HEXISTS', KEYS[i], 'c:' .. id) == 0 then
    local spent = tonumber(redis.call('HGET', KEYS[i], 'spend') or '0')
    local charged = math.max(math.min(price, budget - spent), 0)
    redis.call('HSET', KEYS[i], 'c:' .. id, charged)
    redis.call('HINCRBY', KEYS[i], 'spend', charged)
    redis.call('EXPIRE', KEYS[i], ttl)
    redis.call('RPUSH', KEYS[1], charged .. ':' .. ARGV[at + 3])
    out[i - 1] = charged
  end
end
return out
"""

# Fenced write of users' last shown sponsored lists (models.market.book.shown_value): a 16-byte header
# b"AFSH" + partition <i4, offset <i8, then index <I2 at bytes 17..18 (an event's place in a batched message); a
# value is skipped when the stored one is from the same partition at the same or a later (offset, index).
_WRITE_SHOWN = """
local written = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local np, no, ni = struct.unpack('<i4i8I2', string.sub(new, 5, 18))
  local cur = redis.call('GETRANGE', key, 4, 17)
  local ok = 1
  if #cur == 14 then
    local cp, co, ci = struct.unpack('<i4i8I2', cur)
    if cp == np and (co > no or (co == no and ci >= ni)) then ok = 0 end
  end
  if ok == 1 then redis.call('SET', key, new, 'EX', ARGV[#KEYS + 1]) end
  written[i] = ok
end
return written
"""

# Moves the ledger's published cursor from ARGV[1] to ARGV[2] unless another publisher moved it further.
_ADVANCE_LEDGER = """
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[2]) end
return math.max(at, tonumber(ARGV[2]))
"""

SPEND_TTL_S = 40 * 86400  # a day's spend hash (and its charge ids) outlives the month it is billed in
SHOWN_TTL_S = 7 * 86400   # a shown list older than any attribution window is of no use


def shown_fence(value: bytes) -> tuple[int, int, int]:
    """(partition, offset, index) of a shown-list value (``_WRITE_SHOWN``)."""
    return struct.unpack("<iqH", value[4:18])


@dataclass
class MarketRead:
    """What a batch reads for the market in one round trip: the campaigns' version, each user's last shown
    sponsored list (``None``: none) and the micros spent per asked (campaign id, day)."""

    campaigns_version: int
    shown: list[bytes | None]
    spend: list[int]


@dataclass(frozen=True)
class PopularityWindows:
    """How scene popularity is windowed: ``windows`` windows of ``window_s`` seconds are summed, each keeps
    its ``keep`` most counted items per scene.

    >>> PopularityWindows(window_s=3600, windows=24).window(7200.5), PopularityWindows().ttl_s
    (2, 90000)
    """

    window_s: float = 3600.0
    windows: int = 24
    keep: int = 5000

    def window(self, now: float) -> int:
        return int(now // self.window_s)

    @property
    def ttl_s(self) -> int:
        return int(self.window_s * (self.windows + 1))


def scene_counts(scenes: np.ndarray, items: np.ndarray, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """``(scene name, item index, events)`` per distinct pair of one batch's applied events.

    >>> scene_counts(np.array([0, 1, 0]), np.array([5, 5, 5]), ("default", "home"))
    [('default', 5, 2), ('home', 5, 1)]
    """
    if not len(items):
        return []
    stride = int(items.max()) + 1
    pairs, counts = np.unique(scenes.astype(np.int64) * stride + items, return_counts=True)
    return [(names[p // stride], int(p % stride), int(c)) for p, c in zip(pairs.tolist(), counts.tolist())]


def fence_of(value: bytes) -> tuple[int, int, int]:
    """(partition, offset, index within the message) written into a state value."""
    return (*struct.unpack("<iq", value[FENCE_SLICE]), struct.unpack("<H", value[FENCE_INDEX_SLICE])[0])


@dataclass
class BatchRead:
    states: list[bytes | None]
    item_index: list[int]
    n_items: int
    params_version: int
    catalogue_version: int = 0  # changes in the per-scene catalogue log (``item_scene_changes``)


def parse_scene_changes(values) -> list[tuple[int, int]]:
    """``(item index, scene mask)`` pairs from the change log's ``b"index:mask"`` entries.

    >>> parse_scene_changes([b"3:5", "0:0"])
    [(3, 5), (0, 0)]
    """
    out = []
    for value in values:
        index, mask = (value.decode() if isinstance(value, bytes) else value).split(":")
        out.append((int(index), int(mask)))
    return out


class RedisStore:
    """Attention states, item catalogue and parameter snapshots in one Redis database or a Redis Cluster.

    ``prefix`` namespaces every key so several pipelines (or test runs) can share a server. A user's
    state is one key, so its fenced write is atomic on a cluster too; a batch's writes run as one
    script per hash slot, pipelined per node. ``wait_replicas`` > 0 makes every write wait (Redis
    ``WAIT``) until that many replicas hold it, and fail as a transient error otherwise.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "attnflow", keep_snapshots: int = 3,
                 wait_replicas: int = 0, wait_timeout_ms: int = 2000,
                 popularity: PopularityWindows = PopularityWindows()):
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        # Every command here is idempotent (reads, fenced writes, get-or-assign), so retrying is safe.
        self.url = redacted(url)
        self.redis = connect(
            url, socket_timeout=10, socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.cluster = isinstance(self.redis, RedisCluster)
        self.prefix = prefix
        self.keep_snapshots = keep_snapshots
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._write_states = self.redis.register_script(_WRITE_STATES)
        self._item_index = self.redis.register_script(_ITEM_INDEX)
        self._publish = self.redis.register_script(_PUBLISH_PARAMS)
        self._set_item_scenes = self.redis.register_script(_SET_ITEM_SCENES)
        self._catalog = (f"{prefix}:{{catalog}}:index", f"{prefix}:{{catalog}}:ids")
        self._scene_log = f"{prefix}:{{catalog}}:scenes"  # same hash tag: one script touches all three
        self._params = (f"{prefix}:{{params}}:version", f"{prefix}:{{params}}:snapshot:")
        self.popularity = popularity
        self._count_scene_items = self.redis.register_script(_COUNT_SCENE_ITEMS)
        self._scene_popularity = self.redis.register_script(_SCENE_POPULARITY)
        self._charge = self.redis.register_script(_CHARGE)
        self._write_shown = self.redis.register_script(_WRITE_SHOWN)
        self._advance_ledger = self.redis.register_script(_ADVANCE_LEDGER)
        if not self.cluster:
            self._adopt_untagged_params()

    def _adopt_untagged_params(self) -> None:
        """Snapshots stored before the keys had the {params} hash tag move to the tagged names once, so
        an upgraded deployment keeps its learned parameters."""
        old = f"{self.prefix}:params:version"
        try:
            version = self.redis.get(old)
            if version is None or self.redis.exists(self._params[0]):
                return
            pipe = self.redis.pipeline(transaction=True)
            for v in range(max(1, int(version) - self.keep_snapshots + 1), int(version) + 1):
                if self.redis.exists(f"{self.prefix}:params:snapshot:{v}"):
                    pipe.rename(f"{self.prefix}:params:snapshot:{v}", f"{self._params[1]}{v}")
            pipe.rename(old, self._params[0])
            pipe.execute()
            log.info("moved parameter snapshots up to version %s to the {params} hash-tagged keys", version)
        except TRANSIENT_ERRORS:
            pass  # the store is down: nothing can be read from it either, and the next start retries

    def state_key(self, user_id: str) -> str:
        return f"{self.prefix}:state:{user_id}"

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def _script(self, pipe, script, keys: list, args: list) -> None:
        """Queue ``script`` on ``pipe``; a cluster pipeline refuses ``evalsha`` by name, not the command."""
        if self.cluster:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        else:
            script(keys=keys, args=args, client=pipe)

    def _execute(self, build, scripts: list) -> list:
        """A pipeline that ``build(pipe)`` fills, run; on a cluster, a node that lost its script cache (a
        replica promoted since the scripts were loaded) gets them again and the commands run once more:
        every command here is idempotent. A pipeline forgets its commands when it runs, hence ``build``."""
        pipe = self.redis.pipeline(transaction=False)
        build(pipe)
        if not self.cluster:
            return pipe.execute()
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError:
            for script in scripts:
                self.redis.script_load(script.script)
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()

    def read_batch(self, users: list[str], new_item_ids: list[str]) -> BatchRead:
        """States of ``users``, indices of ``new_item_ids`` (assigned if new), catalogue size and snapshot
        version, in one round trip (per cluster node)."""
        def build(pipe):
            if self.cluster:
                for user in users:
                    pipe.get(self.state_key(user))
            elif users:
                pipe.mget([self.state_key(u) for u in users])
            if new_item_ids:
                self._script(pipe, self._item_index, list(self._catalog), new_item_ids)
            pipe.llen(self._catalog[1])
            pipe.get(self._params[0])
            pipe.llen(self._scene_log)

        replies = self._execute(build, [self._item_index])
        if self.cluster:
            states, replies = replies[:len(users)], replies[len(users):]
        else:
            states = replies.pop(0) if users else []
        index = [int(i) for i in replies.pop(0)] if new_item_ids else []
        return BatchRead(states=states, item_index=index, n_items=int(replies[0]),
                         params_version=int(replies[1] or 0), catalogue_version=int(replies[2]))

    def write_states(self, users: list[str], values: list[bytes],
                     scene_counts: list[tuple[str, int, int]] | None = None) -> list[bool]:
        """Fenced compare-and-set of a batch; ``False`` where a newer state was already stored.
        ``scene_counts`` (``scene_counts()``) are added to the scene popularity in the same round trip."""
        if not users:
            return []
        keys = [self.state_key(u) for u in users]
        if not self.cluster:
            if scene_counts:
                written = [bool(w) for w in self._write_and_count(keys, values, scene_counts)]
            else:
                written = [bool(w) for w in self._write_states(keys=keys, args=values)]
            if self.wait_replicas:
                self._wait(self.redis)
            return written
        by_slot = defaultdict(list)
        for i, key in enumerate(keys):
            by_slot[key_slot(key.encode())].append(i)
        groups = list(by_slot.values())

        def build(pipe):
            for group in groups:
                self._script(pipe, self._write_states, [keys[i] for i in group], [values[i] for i in group])
            if scene_counts:  # last: its reply is not a group's
                self._script(pipe, self._count_scene_items, *self._count_call(scene_counts))

        replies = self._execute(build, [self._write_states, self._count_scene_items])
        written = [False] * len(users)
        for group, reply in zip(groups, replies):
            for i, ok in zip(group, reply):
                written[i] = bool(ok)
        if self.wait_replicas:
            for node in {self.redis.get_node_from_key(keys[group[0]]).name for group in groups}:
                self._wait(self.redis, self.redis.get_node(node_name=node))
        return written

    def _wait(self, client, node=None) -> None:
        """Redis ``WAIT``: block until ``wait_replicas`` replicas have this connection's writes."""
        command = ("WAIT", self.wait_replicas, self.wait_timeout_ms)
        acked = client.execute_command(*command, target_nodes=node) if node else client.execute_command(*command)
        if int(acked) < self.wait_replicas:
            raise ReplicationLag(f"{acked} of {self.wait_replicas} replicas confirmed the write within "
                                 f"{self.wait_timeout_ms} ms")

    def item_index(self, item_ids: list[str]) -> list[int]:
        return self.read_batch([], item_ids).item_index

    def item_ids(self, start: int = 0) -> list[str]:
        """External ids of items ``start..`` in index order."""
        return [v.decode() for v in self.redis.lrange(self._catalog[1], start, -1)]

    def n_items(self) -> int:
        return int(self.redis.llen(self._catalog[1]))

    def set_item_scenes(self, item_ids: list[str], masks: list[int]) -> int:
        """Set each item's scene bitmask (assigning indices to new ids); returns the catalogue version."""
        if not item_ids:
            return self.catalogue_version()
        args = [v for pair in zip(item_ids, (str(int(m)) for m in masks)) for v in pair]
        return int(self._set_item_scenes(keys=[*self._catalog, self._scene_log], args=args))

    def item_scene_changes(self, start: int = 0) -> list[tuple[int, int]]:
        """Catalogue changes ``start..`` in the order they were made: ``(item index, scene mask)``."""
        return parse_scene_changes(self.redis.lrange(self._scene_log, start, -1))

    def catalogue_version(self) -> int:
        return int(self.redis.llen(self._scene_log))

    def publish_params(self, blob: bytes) -> int:
        """Store a snapshot under the next version; keeps the last ``keep_snapshots``."""
        return int(self._publish(keys=self._params, args=[blob, self.keep_snapshots]))

    def params_version(self) -> int:
        return int(self.redis.get(self._params[0]) or 0)

    def load_params(self, version: int) -> bytes | None:
        return self.redis.get(f"{self._params[1]}{version}")

    def read_state(self, user_id: str) -> bytes | None:
        return self.redis.get(self.state_key(user_id))

    # ---- serving: scene popularity (see _COUNT_SCENE_ITEMS) -----------------------------------------

    def popularity_key(self, scene: str, window: int) -> str:
        return f"{self.prefix}:{{popularity}}:{scene}:{window}"

    def _count_call(self, counts: list[tuple[str, int, int]], now: float | None = None) -> tuple[list, list]:
        """Keys and arguments of the counting script for ``counts`` in the window of ``now``."""
        window = self.popularity.window(time.time() if now is None else now)
        by_scene = defaultdict(list)
        for scene, item, n in counts:
            by_scene[scene] += (item, n)
        keys, args = [], [self.popularity.ttl_s, self.popularity.keep]
        for scene, pairs in by_scene.items():
            keys.append(self.popularity_key(scene, window))
            args += [len(pairs) // 2, *pairs]
        return keys, args

    def _write_and_count(self, keys: list[str], values: list[bytes], counts) -> list:
        """The fenced write and the popularity count in one round trip (one server). A script the server
        does not know yet is loaded and only that call run again: re-running the count would count twice."""
        calls = [(self._write_states, keys, values), (self._count_scene_items, *self._count_call(counts))]
        pipe = self.redis.pipeline(transaction=False)
        for script, call_keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(call_keys), *call_keys, *args)
        replies = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                script, call_keys, args = calls[i]
                replies[i] = script(keys=call_keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
        return replies[0]

    def count_scene_items(self, counts: list[tuple[str, int, int]], now: float | None = None) -> None:
        """Add ``(scene, item index, events)`` counts to the scene popularity on their own (``write_states``
        does it in the write's round trip)."""
        if counts:
            self._count_scene_items(*self._count_call(counts, now))

    def scene_popularity(self, scenes: list[str], limit: int, now: float | None = None) -> dict[str, list[tuple[int, float]]]:
        """Per scene, up to ``limit`` ``(item index, events)`` pairs, most counted first, over the newest
        windows (one round trip for all scenes)."""
        if not scenes:
            return {}
        latest = self.popularity.window(time.time() if now is None else now)
        windows = self.popularity.windows
        keys = [self.popularity_key(scene, w) for scene in scenes for w in range(latest - windows + 1, latest + 1)]
        replies = self._scene_popularity(keys=keys, args=[windows, limit])
        return {scene: sorted(((int(top[i]), float(top[i + 1])) for i in range(0, len(top), 2)),
                              key=lambda pair: (-pair[1], pair[0]))
                for scene, top in zip(scenes, replies)}

    # ---- the attention market (see _CHARGE) ----------------------------------------------------------

    def _market(self, *parts) -> str:
        return f"{self.prefix}:{{market}}:" + ":".join(str(p) for p in parts)

    def put_campaigns(self, docs: dict[str, bytes]) -> int:
        """Store campaigns (id -> encoded campaign) and bump the campaigns' version, atomically."""
        pipe = self.redis.pipeline(transaction=True)
        if docs:
            pipe.hset(self._market("campaigns"), mapping=docs)
        pipe.incr(self._market("campaigns", "version"))
        return int(pipe.execute()[-1])

    def campaigns(self) -> tuple[int, dict[str, bytes]]:
        """``(version, {campaign id: encoded campaign})``, read together."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self._market("campaigns", "version"))
        pipe.hgetall(self._market("campaigns"))
        version, docs = pipe.execute()
        return int(version or 0), {k.decode(): v for k, v in docs.items()}

    def read_market(self, users: list[str], spend_of: list[tuple[str, int]]) -> MarketRead:
        """The campaigns' version, ``users``' last shown sponsored lists and the spend of each ``(campaign id,
        day)`` in ``spend_of``, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self._market("campaigns", "version"))
        for user in users:
            pipe.get(self._market("shown", user))
        for campaign, day in spend_of:
            pipe.hget(self._market("spend", campaign, day), "spend")
        replies = pipe.execute()
        return MarketRead(int(replies[0] or 0), replies[1:1 + len(users)],
                          [int(v or 0) for v in replies[1 + len(users):]])

    def write_market(self, users: list[str], shown: list[bytes],
                     charges: list[tuple[str, int, str, int, int, bytes]]) -> tuple[list[bool], list[int]]:
        """Fenced write of users' shown sponsored lists (``_WRITE_SHOWN``, as the states') and the batch's
        charges ``(campaign id, day, charge id, price, budget, record)`` applied once each (``_CHARGE``);
        returns (written per user, micros charged per charge), in one round trip."""
        def build(pipe):
            if users:
                self._script(pipe, self._write_shown, [self._market("shown", u) for u in users],
                             [*shown, SHOWN_TTL_S])
            if charges:
                keys = [self._market("ledger")] + [self._market("spend", c, day) for c, day, *_ in charges]
                args = [SPEND_TTL_S] + [v for _, _, cid, price, budget, record in charges
                                        for v in (cid, price, budget, record)]
                self._script(pipe, self._charge, keys, args)

        replies = self._execute(build, [self._write_shown, self._charge])
        written = [bool(w) for w in replies.pop(0)] if users else []
        return written, ([int(v) for v in replies.pop(0)] if charges else [])

    def ledger_entries(self, start: int, limit: int) -> list[bytes]:
        """Ledger entries ``start .. start + limit`` (``b"<charged micros>:<charge JSON>"``, oldest first)."""
        return self.redis.lrange(self._market("ledger"), start, start + limit - 1)

    def ledger_published(self) -> int:
        """How many ledger entries have been sent to the ledger topic (at least once)."""
        return int(self.redis.get(self._market("ledger", "published")) or 0)

    def advance_ledger(self, to: int) -> int:
        """Mark the ledger published up to ``to`` (never backwards); returns the cursor."""
        return int(self._advance_ledger(keys=[self._market("ledger", "published")], args=[0, to]))

    def spend(self, campaign_id: str, day: int) -> int:
        """Micros spent by a campaign on ``day`` (days since 1970, of the click's event time)."""
        return int(self.redis.hget(self._market("spend", campaign_id, day), "spend") or 0)

    def clear(self) -> int:
        """Delete every key under this prefix (tests and ``attnflow reset``), on every cluster node."""
        keys = list(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000))
        step = 1 if self.cluster else 1000  # a cluster's DEL takes keys of one slot
        for start in range(0, len(keys), step):
            self.redis.delete(*keys[start:start + step])
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
                    kept = sorted(counted.items(), key=lambda pair: pair[1], reverse=True)[:self.popularity.keep]
                    self.scene_windows[(scene, window)] = dict(kept)

    def scene_popularity(self, scenes: list[str], limit: int, now: float | None = None) -> dict[str, list[tuple[int, float]]]:
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
        self.states.clear(); self.catalog.clear(); self.ids.clear(); self.snapshots.clear(); self.scene_log.clear()
        self.scene_windows.clear()
        self.market.clear()
        return n

    def close(self) -> None:
        pass
