"""``RedisStore``: attention states, the item catalogue, parameter snapshots, scene popularity and the
market's keys in Redis; the only class that builds a key name.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis
from redis.cluster import RedisCluster, key_slot

from models.store.connection import TRANSIENT_ERRORS, ReplicationLag, connect, redacted
from models.store.records import (SHOWN_TTL_S, SPEND_TTL_S, BatchRead, MarketRead, PopularityWindows,
                                  parse_scene_changes)
from models.store.scripts import (_ADVANCE_LEDGER, _CHARGE, _COUNT_SCENE_ITEMS, _ITEM_INDEX, _PUBLISH_PARAMS,
                                  _SCENE_POPULARITY, _SET_ITEM_SCENES, _WRITE_SHOWN, _WRITE_STATES)

log = logging.getLogger(__name__)

class RedisStore:
    """Attention states, item catalogue and parameter snapshots in one Redis database or a Redis Cluster.

    ``prefix`` namespaces every key so several pipelines (or test runs) can share a server. A user's
    state is one key, so its fenced write is atomic on a cluster too; a batch's writes run as one
    script per hash slot, pipelined per node. ``wait_replicas`` > 0 makes every write wait (Redis
    ``WAIT``) until that many replicas hold it, and fail as a transient error otherwise.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "attnflow",
                 keep_snapshots: int = 3, wait_replicas: int = 0, wait_timeout_ms: int = 2000,
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
        acked = (client.execute_command(*command, target_nodes=node) if node
                 else client.execute_command(*command))
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

    def scene_popularity(self, scenes: list[str], limit: int,
                         now: float | None = None) -> dict[str, list[tuple[int, float]]]:
        """Per scene, up to ``limit`` ``(item index, events)`` pairs, most counted first, over the newest
        windows (one round trip for all scenes)."""
        if not scenes:
            return {}
        latest = self.popularity.window(time.time() if now is None else now)
        windows = self.popularity.windows
        keys = [self.popularity_key(scene, w) for scene in scenes
                for w in range(latest - windows + 1, latest + 1)]
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
        """The campaigns' version, ``users``' last shown sponsored lists and the spend of each
        ``(campaign id, day)`` in ``spend_of``, in one round trip."""
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
