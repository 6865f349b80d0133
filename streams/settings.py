"""The one place a tunable lives: ``Settings``, read from ``ATTNFLOW_*`` environment variables.

Defaults run against the local stack started by ``deploy/`` (Kafka on 127.0.0.1:9092, Redis on
127.0.0.1:6379). The CLI, the Faust app, the benchmarks and the tests all build one of these.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from models.config import EngineConfig

PREFIX = "ATTNFLOW_"


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Typed settings; each field ``name`` is read from ``ATTNFLOW_NAME``.

    >>> Settings.from_env({"ATTNFLOW_PARTITIONS": "8", "ATTNFLOW_SCENES": "default,search"}).partitions
    8
    >>> Settings.from_env({"ATTNFLOW_BATCH_SIZE": "many"})
    Traceback (most recent call last):
    ...
    ValueError: ATTNFLOW_BATCH_SIZE='many' is not a valid int
    >>> Settings.from_env({"ATTNFLOW_STATE_MIGRATE_FROM": "history=fifty"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ATTNFLOW_STATE_MIGRATE_FROM='history=fifty': state layout ...: history must be an integer, ...
    """

    # Services
    kafka_bootstrap: str = "127.0.0.1:9092"
    # Kafka client security (streams/kafka_clients.py builds every client from these): PLAINTEXT,
    # SASL_PLAINTEXT, SASL_SSL or SSL; SASL logs in with SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN; TLS
    # trusts the CA in ``kafka_ssl_cafile`` ("" = the system's). The password is kept out of repr
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    # redis://[user:password@]host:port/db, rediss:// for TLS (?ssl_ca_certs=/path/ca.pem), or
    # redis+cluster://host:port,host:port for a Redis Cluster. Kept out of repr: it may hold a password
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    # Replicas that must confirm each batch's state writes (Redis WAIT) before its events are acked to
    # Kafka, so that a master's loss cannot drop writes whose offsets are committed; 0 = don't wait
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 2000
    # Names: the consumer group, a prefix for every topic, and one for every Redis key
    app_id: str = "attnflow"
    topic_prefix: str = ""
    redis_prefix: str = "attnflow"
    partitions: int = 4
    replication_factor: int = 1
    # Replicas that must hold a write before acks=all succeeds, set on the topics ensure_topics creates
    # when replication_factor > 1; 0 = min(2, replication_factor), so one broker may be down
    min_insync_replicas: int = 0
    # Micro-batching: up to ``batch_size`` events, waiting at most ``batch_within_s`` for them. The
    # window is short because takes that arrive while the engine is busy merge (``batch_merge``):
    # under load, batches grow while the engine works, not while the window runs
    batch_size: int = 512
    batch_within_s: float = 0.005
    # The candidate stage (models.candidates) for catalogues above ``candidates_above`` items (0 = never):
    # ``candidates`` items proposed per user by an IVF index, ``candidates_nprobe`` of its
    # ``candidates_lists`` cells searched (0: about 2 sqrt(items)), then ranked by the exact score
    candidates_above: int = 200000
    candidates: int = 512
    candidates_nprobe: int = 64
    candidates_lists: int = 0
    candidates_threads: int = 1  # faiss threads for the index (0: one per core)
    # Events per Kafka message that ``attnflow replay`` and ``streams.replay.replay`` send (a JSON array,
    # see streams.codec.decode_events); 1 = one message per event. The rank agent reads both framings
    replay_batch_events: int = 200
    # Dynamic batching: events taken while the newest batch waits for the engine join it (up to
    # ``batch_size``), so the engine ranks what arrived while it was busy in one call; false = every
    # take is a batch of its own
    batch_merge: bool = True
    # Batches in flight per worker: 3 ranks batch N+1 while batch N's outputs are delivered and batch
    # N+2 is taken and decoded; 1 = one at a time
    pipeline_depth: int = 3
    # Faust's consumer hands each message to the streams without the four tasks it makes per message
    # (streams/eager.py); false = stock Faust
    eager_delivery: bool = True
    # The broker holds a consumer's fetch until this many bytes are there or this many ms have passed
    # (streams/fetch.py); Faust's own are 1 byte and 1500 ms
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 1500
    # Faust's opt-in Cython fast paths (its ``cython_optimizations`` setting): the stream iterator takes
    # events already in the stream's queue without awaiting it; false = the paths released versions run
    faust_cython_optimizations: bool = True
    # Faust's Monitor sensor counts every message and stream event (four hooks per message, ~2.5 µs of
    # the event loop); attnflow's own metrics count per batch. false = a Monitor without those hooks
    # (streams/sensors.py); true = stock Faust
    faust_message_stats: bool = False
    # Model shape and policies (see models.config.EngineConfig)
    dim: int = 64
    history: int = 50
    k: int = 20
    scenes: tuple[str, ...] = ("default", "home", "search", "product")
    mask_types: tuple[str, ...] = ()
    interest_decay: float = 0.9
    item_chunk: int = 0  # 0: the backend's default (models.kernels.AUTO_CHUNK)
    initial_capacity: int = 16384
    seed: int = 0
    # The state layout before a change of HISTORY, DIM, K or SCENES, e.g. "history=50" or
    # "history=50 dim=64 k=20 scenes=default,home,search,product" (keys left out: the current values).
    # States stored in it are converted as users are read (models.state.migrate); "" = states of
    # any other layout are refused (their events go to the dead-letter topic)
    state_migrate_from: str = ""
    # Explanations (opt-in): each list, on the topic and from /recommendations, carries the explain_events
    # most-attended history events and the weight of each scene interest (models.explain)
    explain: bool = False
    explain_events: int = 3
    # The attention market (models/market, docs/market.md): sponsored_slots of the k positions of every
    # list, at sponsored_ranks (1-based; () = spread evenly), go to a GSP auction on bid x calibrated pCTR
    # over the live campaigns; a click pays at least reserve_price (currency units) and at most its bid.
    # A click is any event on a sponsored item within attribution_window_s of the list. pacing throttles
    # a campaign ahead of its even daily plan (pacing_gain: how sharply); 0 slots = off, nothing changes
    sponsored_slots: int = 0
    sponsored_ranks: tuple[str, ...] = ()
    reserve_price: float = 0.01
    attribution_window_s: float = 1800.0
    pacing: bool = True
    pacing_gain: float = 4.0
    calibration_prior_ctr: float = 0.01
    ledger_interval_s: float = 1.0
    # An ad takes a slot only with a pCTR of at least this times that of the organic item it pushes off the
    # first 10 positions (0 = no floor; docs/market.md shows what it trades: revenue for list quality)
    sponsored_quality_floor: float = 0.0
    # Event validation: an event's ts may be at most this many seconds after its Kafka record's own
    # timestamp (later ones go to the dead-letter topic, see streams.codec.ts_limit)
    max_future_s: float = 86400.0
    # What this process runs: "all" (rank + train agents), "rank", or "train" (a dedicated trainer, so
    # optax steps do not compete with ranking for the same cores)
    role: str = "all"
    # Online training: examples go to the train topic, one trainer learns, snapshots go to Redis
    train_enabled: bool = True
    train_batch_size: int = 64
    train_learning_rate: float = 3e-3
    train_replay_steps: int = 2
    # Uniform negatives of the sampled softmax, used once the item table has 8 rows per negative
    # (models.training.sampled); 0 = always the full softmax over the table
    train_negatives: int = 1024
    snapshot_interval_s: float = 20.0
    train_max_lag_s: float = 120.0  # skip training messages older than this (0: never skip)
    # Most of the wall time a trainer beside a rank agent (role "all") spends learning; examples that
    # arrive while it is over that share are skipped and counted. A dedicated trainer uses all it has.
    train_max_share: float = 0.25
    # Before each step, a trainer beside a rank agent waits up to this long for no batch to be in the
    # rank path, so steps run in ranking's gaps (0: never waits)
    train_yield_s: float = 0.05
    # A dedicated trainer (role "train") lowers its CPU priority by this much (nice), so that on a
    # machine it shares with rank workers, ranking gets the cores first and steps take what is left
    train_nice: int = 19
    # Worker process
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # Request-time API (GET /recommendations, streams/serving.py): on every rank worker's web port
    # (serve_in_worker) and on ``attnflow serve`` (web_host:serve_port, Redis only). k may be 1..serve_max_k,
    # at most serve_max_exclude ids may be excluded. Concurrent requests are ranked together, up to
    # serve_batch_size per kernel call (serve_batching=false: one request per call), after waiting up
    # to serve_batch_window_s for more while requests keep arriving during calls (0: only those that
    # queued while the previous call ran; a lone client never waits). A call costs ~1 ms of kernel CPU
    # at any size up to the smallest bucket, so fuller calls leave the cores to the HTTP side
    serve_port: int = 6070
    serve_in_worker: bool = True
    serve_max_k: int = 100
    serve_max_exclude: int = 100
    serve_batching: bool = True
    serve_batch_size: int = 32
    serve_batch_window_s: float = 0.002
    # Scene popularity (cold start of unknown users): rank workers count events per scene and item in
    # windows of popularity_window_s, the newest popularity_windows of which are summed; each window
    # keeps its popularity_keep most counted items. A server re-reads it every popularity_refresh_s
    popularity_window_s: float = 3600.0
    popularity_windows: int = 24
    popularity_keep: int = 5000
    popularity_refresh_s: float = 5.0
    log_level: str = "info"
    # asyncio event loop: "auto" (uvloop when installed), "uvloop" or "asyncio"
    event_loop: str = "auto"
    # Consumer group timing; short values make rebalances quick on a small cluster
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    commit_interval_s: float = 1.0
    # A worker whose batch failed stops so that it restarts; if its orderly stop takes longer than this,
    # it exits hard with status 70 (0 waits for ever)
    crash_exit_s: float = 30.0
    # Compiled kernels are cached here across restarts ("" disables the cache)
    compile_cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "attnflow", "jax")
    # Where the CLI finds datasets (defaults to ../shared/data next to the repository)
    data_dir: str = ""
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(f.default)
            try:
                if kind is tuple:
                    values[f.name] = _split(raw)
                elif kind is bool:
                    values[f.name] = raw.lower() in ("1", "true", "yes", "on")
                else:
                    values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        values.update(overrides)
        settings = cls(**values)
        if settings.role not in ("all", "rank", "train"):
            raise ValueError(f"{PREFIX}ROLE={settings.role!r}: expected all, rank or train")
        if not 0.0 < settings.train_max_share <= 1.0:
            raise ValueError(f"{PREFIX}TRAIN_MAX_SHARE={settings.train_max_share}: must be in (0, 1]")
        if settings.train_negatives < 0:
            raise ValueError(f"{PREFIX}TRAIN_NEGATIVES={settings.train_negatives}: must be 0 (full "
                             "softmax) or more")
        if settings.train_yield_s < 0:
            raise ValueError(f"{PREFIX}TRAIN_YIELD_S={settings.train_yield_s}: must be 0 or more")
        if not 0 <= settings.train_nice <= 19:
            raise ValueError(f"{PREFIX}TRAIN_NICE={settings.train_nice}: must be 0 (unchanged) to 19")
        if not settings.max_future_s >= 0:
            raise ValueError(f"{PREFIX}MAX_FUTURE_S={settings.max_future_s}: must be 0 or more")
        if settings.pipeline_depth < 1:
            raise ValueError(f"{PREFIX}PIPELINE_DEPTH={settings.pipeline_depth}: must be at least 1")
        if settings.kafka_security_protocol not in ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"):
            raise ValueError(f"{PREFIX}KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r}: "
                             "expected PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL")
        if settings.kafka_sasl_mechanism not in ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"):
            raise ValueError(f"{PREFIX}KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r}: expected "
                             "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
        if settings.kafka_security_protocol.startswith("SASL") and not settings.kafka_sasl_username:
            raise ValueError(f"{PREFIX}KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
                             f"{PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD")
        if not 0 <= settings.min_insync_replicas <= max(settings.replication_factor, 1):
            raise ValueError(f"{PREFIX}MIN_INSYNC_REPLICAS={settings.min_insync_replicas}: must be 0 "
                             f"(automatic) to the replication factor ({settings.replication_factor})")
        if not 1 <= settings.serve_batch_size <= EngineConfig.buckets[-1]:
            raise ValueError(f"{PREFIX}SERVE_BATCH_SIZE={settings.serve_batch_size}: must be 1 to "
                             f"{EngineConfig.buckets[-1]}")
        if settings.serve_max_k < 1 or settings.serve_max_exclude < 0 or settings.serve_batch_window_s < 0:
            raise ValueError(f"{PREFIX}SERVE_MAX_K must be at least 1, SERVE_MAX_EXCLUDE and "
                             "SERVE_BATCH_WINDOW_S at least 0")
        if (settings.popularity_window_s <= 0 or settings.popularity_windows < 1
                or settings.popularity_keep < 1):
            raise ValueError(f"{PREFIX}POPULARITY_WINDOW_S, _WINDOWS and _KEEP must be positive")
        if not 1 <= settings.explain_events <= settings.history:
            raise ValueError(f"{PREFIX}EXPLAIN_EVENTS={settings.explain_events}: must be 1 to HISTORY "
                             f"({settings.history})")
        settings.market_ranks()  # a bad SPONSORED_SLOTS / _RANKS fails at start-up
        if settings.reserve_price < 0 or settings.attribution_window_s <= 0 or settings.pacing_gain <= 0 \
                or settings.sponsored_quality_floor < 0 \
                or not 0 < settings.calibration_prior_ctr < 1:
            raise ValueError(f"{PREFIX}RESERVE_PRICE and SPONSORED_QUALITY_FLOOR must be at least 0, "
                             "ATTRIBUTION_WINDOW_S and PACING_GAIN positive, CALIBRATION_PRIOR_CTR in (0, 1)")
        if settings.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError(f"{PREFIX}EVENT_LOOP={settings.event_loop!r}: expected auto, uvloop or asyncio")
        from models.state import previous_layout

        cfg = settings.engine_config()  # fail at start-up, not on the first event
        try:
            previous_layout(cfg)
        except ValueError as exc:
            raise ValueError(f"{PREFIX}STATE_MIGRATE_FROM={settings.state_migrate_from!r}: {exc}") from None
        return settings

    def store(self):
        """The Redis store these settings name (``models.store.RedisStore``)."""
        from models.store import PopularityWindows, RedisStore

        return RedisStore(self.redis_url, self.redis_prefix, wait_replicas=self.redis_wait_replicas,
                          wait_timeout_ms=self.redis_wait_timeout_ms,
                          popularity=PopularityWindows(self.popularity_window_s, self.popularity_windows,
                                                       self.popularity_keep))

    def market_ranks(self) -> tuple[int, ...]:
        """The 0-based list positions of the sponsored slots (``()``: the market is off).

        >>> (Settings(sponsored_slots=2).market_ranks(),
        ...  Settings(sponsored_slots=2, sponsored_ranks=("1", "3")).market_ranks())
        ((4, 14), (0, 2))
        """
        n, k = self.sponsored_slots, self.k
        if not 0 <= n <= k:
            raise ValueError(f"{PREFIX}SPONSORED_SLOTS={n}: must be 0 (off) to K ({k})")
        if not self.sponsored_ranks:
            return tuple(int((j + 0.5) * k / n) - 1 for j in range(n)) if n else ()
        try:
            ranks = tuple(int(r) - 1 for r in self.sponsored_ranks)
        except ValueError:
            raise ValueError(f"{PREFIX}SPONSORED_RANKS={','.join(self.sponsored_ranks)}: "
                             "not 1-based ranks") from None
        if len(ranks) != n or len(set(ranks)) != n or not all(0 <= r < k for r in ranks):
            raise ValueError(f"{PREFIX}SPONSORED_RANKS={','.join(self.sponsored_ranks)}: must "
                             f"name {n} distinct ranks in 1..{k} (one per sponsored slot)")
        return tuple(sorted(ranks))

    def topic_min_insync_replicas(self) -> int:
        """``min.insync.replicas`` for new topics: the setting, or min(2, replication factor).

        >>> Settings(replication_factor=3).topic_min_insync_replicas(), Settings().topic_min_insync_replicas()
        (2, 1)
        """
        return self.min_insync_replicas or min(2, self.replication_factor)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(dim=self.dim, history=self.history, scenes=self.scenes, k=self.k,
                            interest_decay=self.interest_decay, mask_types=self.mask_types,
                            item_chunk=self.item_chunk, initial_capacity=self.initial_capacity,
                            max_batch=self.batch_size, seed=self.seed,
                            previous_layout=self.state_migrate_from,
                            explain_events=self.explain_events if self.explain else 0,
                            candidates_above=self.candidates_above, candidates=self.candidates,
                            candidates_nprobe=self.candidates_nprobe, candidates_lists=self.candidates_lists,
                            candidates_threads=self.candidates_threads)

    def train_config(self):
        from models.training import TrainConfig

        return TrainConfig(learning_rate=self.train_learning_rate, batch_size=self.train_batch_size,
                           replay_steps=self.train_replay_steps, negatives=self.train_negatives,
                           seed=self.seed)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (workers, tests)."""
        env = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            env[PREFIX + f.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
        return env


def use_event_loop(settings: Settings) -> None:
    """Install the configured event loop policy; call it before Faust creates its loop.

    uvloop runs Faust's callbacks and aiokafka's socket handling in C instead of Python; it is the
    default when installed (the rank worker logs which loop it got).
    """
    if settings.event_loop == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "uvloop":
            raise RuntimeError(f"{PREFIX}EVENT_LOOP=uvloop but uvloop is not installed "
                               "(pip install uvloop)") from None
        return
    import asyncio

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def restore_root_log_level(level: str) -> None:
    """Put the root logger back at the configured level once the worker has started.

    At ``warn`` or ``error`` Faust sets the root logger to DEBUG, so that its start-up spinner turns
    on every record, and leaves it there. Every ``log.debug`` in aiokafka, Faust and mode then built
    a record and ran the handlers: a ``send_batch`` or a connection write alone made one.

    >>> import logging
    >>> root = logging.getLogger(); before = root.level
    >>> root.setLevel(logging.DEBUG); restore_root_log_level("warn"); logging.getLevelName(root.level)
    'WARNING'
    >>> root.setLevel(before)
    """
    logging.getLogger().setLevel(logging.getLevelName(level.upper()))  # "WARN" maps to WARNING too
