"""How to reach the store: the client for a Redis URL (one server or a Cluster), the errors a caller
retries or stops on, the least a worker's ACL user needs, and URLs safe to log.
"""
from __future__ import annotations

from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster

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
    "get", "mget", "set", "getrange", "exists", "del", "rename", "scan", "llen", "lrange", "rpush", "hget",
    "hset", "incr", "evalsha", "eval", "script|load", "script|exists", "wait", "ping", "info", "command",
    "readonly",
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
