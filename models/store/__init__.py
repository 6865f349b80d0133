"""Where attention states, the item catalogue and parameter snapshots live: Redis (one server or a
Redis Cluster), or memory for tests.

This package is the only place that knows Redis key names, Lua scripts and how to connect. Every batch
costs one round trip to read (states + new item ids + the parameter version, pipelined) and one to
write (a fenced compare-and-set script); on a cluster, one round trip per node that holds the batch's
keys. Both stores keep the same semantics so the engine cannot tell them apart.

The package: ``connection`` (clients, errors, ACL), ``scripts`` (the Lua), ``records`` (the values
read and written), ``redis_store`` (``RedisStore``) and ``memory`` (``MemoryStore``). Import from
``models.store``: every name below is re-exported here.
"""
from __future__ import annotations

from models.store.connection import (CLUSTER_SCHEMES, FATAL_STORE_ERRORS, TRANSIENT_ERRORS, WORKER_COMMANDS,
                                     ReplicationLag, connect, redacted, worker_acl)
from models.store.memory import MemoryStore
from models.store.records import (SHOWN_TTL_S, SPEND_TTL_S, BatchRead, MarketRead, PopularityWindows,
                                  fence_of, parse_scene_changes, scene_counts, shown_fence)
from models.store.redis_store import RedisStore

__all__ = ["CLUSTER_SCHEMES", "FATAL_STORE_ERRORS", "SHOWN_TTL_S", "SPEND_TTL_S", "TRANSIENT_ERRORS",
           "WORKER_COMMANDS", "BatchRead", "MarketRead", "MemoryStore", "PopularityWindows", "RedisStore",
           "ReplicationLag", "connect", "fence_of", "parse_scene_changes", "redacted", "scene_counts",
           "shown_fence", "worker_acl"]

