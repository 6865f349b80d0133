#!/usr/bin/env bash
# Apache Kafka (KRaft, combined broker+controller) for attnflow dev/CI: one broker by default, or a
# replicated 3-broker cluster. No tarball download: broker jars come from Maven Central via
# deploy/kafka/pom.xml.
#
# Usage: deploy/kafka.sh fetch | start | stop [--wipe] | status | logs [-f] [LINES]
#        deploy/kafka.sh cluster start | stop [--wipe] | status | bootstrap | kill N | restart N
#
# `cluster` runs 3 brokers (nodes 1-3, each also a controller voter) on loopback with replication
# factor 3 and min.insync.replicas 2 (deploy/kafka/cluster.properties); `bootstrap` prints their
# ATTNFLOW_KAFKA_BOOTSTRAP; `kill N` SIGKILLs node N (fault tests), `restart N` starts it again and
# waits until it is registered.
#
# ATTNFLOW_KAFKA_SASL=1 start: the single broker's client port takes SASL_PLAINTEXT with SCRAM
# (user ATTNFLOW_KAFKA_SASL_USERNAME, default attnflow; password ATTNFLOW_KAFKA_SASL_PASSWORD, or one
# generated into $ATTNFLOW_STATE_DIR/kafka/sasl.password, mode 600). The user is created when the
# storage is formatted: a broker formatted without SASL must be wiped (stop --wipe) to gain it.
#
# Environment (all optional):
#   KAFKA_VERSION                   broker version (default 4.0.0; needs Java 17+)
#   ATTNFLOW_CACHE                  jar cache root (default ~/.cache/attnflow)
#   ATTNFLOW_STATE_DIR              state root (default <repo>/.attnflow); Kafka uses ./kafka
#   ATTNFLOW_KAFKA_HOST             listen/advertise address (default 127.0.0.1)
#   ATTNFLOW_KAFKA_PORT             client port (default 9092)
#   ATTNFLOW_KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   ATTNFLOW_KAFKA_INTERNAL_PORT    with SASL: PLAINTEXT broker-to-broker port (default 9094)
#   ATTNFLOW_KAFKA_SASL_MECHANISM   with SASL: SCRAM-SHA-512 (default) or SCRAM-SHA-256
#   ATTNFLOW_KAFKA_CLUSTER_PORT     cluster: node 1's client port, node N's is +N-1 (default 19092)
#   ATTNFLOW_KAFKA_CLUSTER_CONTROLLER_PORT  cluster: node 1's controller port (default 19192)
#   ATTNFLOW_KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90; cluster 180)
#   ATTNFLOW_KAFKA_STOP_TIMEOUT     seconds to wait after TERM before KILL (default 30)
#   ATTNFLOW_PYTHON                 python with kafka-python for the readiness probe
#   KAFKA_HEAP_OPTS                 default "-Xms256m -Xmx512m" (cluster nodes: "-Xms128m -Xmx384m")
#   KAFKA_JVM_PERFORMANCE_OPTS      default: G1 flags as in kafka-run-class.sh
#   KAFKA_OPTS                      extra JVM flags appended last
#   JAVA_HOME                       java to use (else `java` on PATH)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
source "$SCRIPT_DIR/lib.sh"
LOG_PREFIX=kafka

KAFKA_VERSION="${KAFKA_VERSION:-4.0.0}"
SCALA_BINARY="2.13"
CACHE_ROOT="$(abspath "${ATTNFLOW_CACHE:-$HOME/.cache/attnflow}")"
KAFKA_CACHE="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_CACHE/libs"
FETCH_MARKER="$KAFKA_CACHE/.fetch-complete"
POM="$SCRIPT_DIR/kafka/pom.xml"
CONF_TEMPLATE="$SCRIPT_DIR/kafka/server.properties"
LOG4J_CONF="$SCRIPT_DIR/kafka/log4j2.yaml"

HOST="${ATTNFLOW_KAFKA_HOST:-127.0.0.1}"
PORT="${ATTNFLOW_KAFKA_PORT:-9092}"
CPORT="${ATTNFLOW_KAFKA_CONTROLLER_PORT:-9093}"
IPORT="${ATTNFLOW_KAFKA_INTERNAL_PORT:-9094}"
START_TIMEOUT="${ATTNFLOW_KAFKA_START_TIMEOUT:-90}"
SASL="${ATTNFLOW_KAFKA_SASL:-0}"
[[ "$SASL" =~ ^(1|true|yes|on)$ ]] && SASL=1 || SASL=0
SASL_USER="${ATTNFLOW_KAFKA_SASL_USERNAME:-attnflow}"
SASL_MECHANISM="${ATTNFLOW_KAFKA_SASL_MECHANISM:-SCRAM-SHA-512}"
SASL_CONF="$SCRIPT_DIR/kafka/sasl.properties"
HEAP_DEFAULT="-Xms256m -Xmx512m"
STOP_TIMEOUT="${ATTNFLOW_KAFKA_STOP_TIMEOUT:-30}"

KDIR="$ATTNFLOW_STATE_DIR/kafka"
DATA_DIR="$KDIR/data"
LOG_DIR="$KDIR/logs"
CONF="$KDIR/server.properties"
PIDFILE="$KDIR/kafka.pid"
CLUSTER_ID_FILE="$KDIR/cluster.id"
STDOUT_LOG="$LOG_DIR/kafka.out"
SERVER_LOG="$LOG_DIR/server.log"
PASSWORD_FILE="$KDIR/sasl.password"
MAIN_CLASS="kafka.Kafka"

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (Kafka $KAFKA_VERSION needs Java 17+; apt-get install -y openjdk-17-jre-headless)"
  fi
}

check_java_version() {
  local java major
  java="$(java_bin)"
  major="$("$java" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
  major="${major#1.}"
  if [[ -n "$major" && "$major" =~ ^[0-9]+$ && "$major" -lt 17 ]]; then
    die "Kafka ${KAFKA_VERSION} broker needs Java 17+, found $major ($java)"
  fi
}

# --------------------------------------------------------------------------- fetch

# classes_present DIR CLASS... -> 0 if every class is in some jar under DIR.
classes_present() {
  local dir="$1"; shift
  if command -v javap >/dev/null 2>&1; then
    javap -cp "$dir/*" "$@" >/dev/null 2>&1
  else
    python3 - "$dir" "$@" <<'EOF'
import glob, sys, zipfile
d, wanted = sys.argv[1], {c.replace('.', '/') + '.class' for c in sys.argv[2:]}
for jar in glob.glob(d + '/*.jar'):
    with zipfile.ZipFile(jar) as z:
        wanted -= set(z.namelist())
sys.exit(1 if wanted else 0)
EOF
  fi
}

REQUIRED_CLASSES=(
  kafka.Kafka
  kafka.tools.StorageTool
  org.apache.logging.log4j.core.LoggerContext
  org.apache.logging.slf4j.Log4jLogger
  com.fasterxml.jackson.dataformat.yaml.YAMLFactory
)

fetched() {
  [[ -f "$FETCH_MARKER" && -f "$LIBS/kafka_${SCALA_BINARY}-${KAFKA_VERSION}.jar" ]]
}

cmd_fetch() {
  if fetched; then
    log "kafka $KAFKA_VERSION jars already in $LIBS"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (apt-get install -y maven)"
  mkdir -p "$KAFKA_CACHE"
  # Serialise concurrent fetches (e.g. parallel test jobs) on the same cache. The
  # subshell closes fd 8 afterwards, so a broker started later does not inherit the lock.
  (
    if command -v flock >/dev/null 2>&1; then flock 8; fi
    if fetched; then
      log "kafka $KAFKA_VERSION jars already in $LIBS"
      exit 0
    fi
    tmp="$KAFKA_CACHE/libs.tmp.$$"
    t0=$SECONDS
    rm -rf "$tmp"
    log "fetching org.apache.kafka:kafka_${SCALA_BINARY}:$KAFKA_VERSION + deps from Maven into $LIBS"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$tmp" -DincludeScope=runtime \
        >"$KAFKA_CACHE/fetch.log" 2>&1; then
      rm -rf "$tmp"
      tail_file "$KAFKA_CACHE/fetch.log" 40
      die "maven fetch failed (is Maven Central reachable? full log: $KAFKA_CACHE/fetch.log)"
    fi
    if ! classes_present "$tmp" "${REQUIRED_CLASSES[@]}"; then
      rm -rf "$tmp"
      die "fetched jars lack one of: ${REQUIRED_CLASSES[*]}"
    fi
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    {
      echo "kafka.version=$KAFKA_VERSION"
      echo "fetched.at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      echo "jars=$(find "$LIBS" -name '*.jar' | wc -l)"
    } >"$FETCH_MARKER"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - t0))s"
  ) 8>"$KAFKA_CACHE/.fetch.lock"
}

# --------------------------------------------------------------------------- process

# Prints the broker pid for this state dir, if it is running.
running_pid() {
  local pid
  pid="$(read_pidfile "$PIDFILE")"
  if [[ -n "$pid" ]] && pid_alive "$pid" && pid_cmdline_has "$pid" "$MAIN_CLASS $CONF"; then
    echo "$pid"
    return 0
  fi
  # Pidfile lost or stale: look for a broker started with exactly our config file.
  pid="$(pgrep -f -- "$MAIN_CLASS $CONF" 2>/dev/null | head -n1 || true)"
  if [[ -n "$pid" ]] && pid_alive "$pid"; then
    echo "$pid" >"$PIDFILE"
    echo "$pid"
    return 0
  fi
  return 1
}

pick_python() {
  local py
  for py in "${ATTNFLOW_PYTHON:-}" "$ATTNFLOW_ROOT/.venv/bin/python" python3; do
    [[ -n "$py" ]] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import kafka' >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

# probe_metadata PY [SERVERS [BROKERS]]: a real metadata round trip through each server of the
# comma-separated SERVERS (default this broker), each seeing at least BROKERS live brokers (default 1).
# With SASL it logs in; the password reaches the probe in its environment, never on a command line.
probe_metadata() {
  local py="$1" servers="${2:-$HOST:$PORT}" want="${3:-1}" password=""
  if ((SASL)); then password="$(sasl_password)"; fi
  PROBE_SASL="$SASL" PROBE_MECHANISM="$SASL_MECHANISM" PROBE_USER="$SASL_USER" PROBE_PASSWORD="$password" \
    timeout 30 "$py" - "$servers" "$want" <<'EOF'
import logging, os, sys
logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient
auth = {}
if os.environ["PROBE_SASL"] == "1":
    auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism=os.environ["PROBE_MECHANISM"],
                sasl_plain_username=os.environ["PROBE_USER"], sasl_plain_password=os.environ["PROBE_PASSWORD"])
for server in sys.argv[1].split(","):
    admin = KafkaAdminClient(bootstrap_servers=server, client_id="attnflow-readiness",
                             request_timeout_ms=10000, **auth)
    try:
        admin.list_topics()
        brokers = admin.describe_cluster().get("brokers") or []
        if len(brokers) < int(sys.argv[2]):
            sys.exit(f"{server}: {len(brokers)} of {sys.argv[2]} brokers registered")
    finally:
        admin.close()
EOF
}

# The SCRAM password: ATTNFLOW_KAFKA_SASL_PASSWORD, else the one generated into PASSWORD_FILE.
sasl_password() {
  if [[ -n "${ATTNFLOW_KAFKA_SASL_PASSWORD:-}" ]]; then
    printf '%s' "$ATTNFLOW_KAFKA_SASL_PASSWORD"
  elif [[ -s "$PASSWORD_FILE" ]]; then
    cat "$PASSWORD_FILE"
  else
    mkdir -p "$KDIR"
    (umask 077; openssl rand -hex 24 | tr -d '\n' >"$PASSWORD_FILE.tmp") || die "could not generate a SASL password"
    mv "$PASSWORD_FILE.tmp" "$PASSWORD_FILE"
    log "generated the SASL password of user $SASL_USER into $PASSWORD_FILE (mode 600)" >&2
    cat "$PASSWORD_FILE"
  fi
}

# The listener lines of server.properties: PLAINTEXT on PORT, or SASL_PLAINTEXT on PORT with brokers
# on an INTERNAL PLAINTEXT port.
LISTENERS="" ADVERTISED_LISTENERS="" INTER_BROKER_LISTENER="" PROTOCOL_MAP=""
set_listeners() {
  if ((SASL)); then
    LISTENERS="SASL_PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT,INTERNAL://$HOST:$IPORT"
    ADVERTISED_LISTENERS="SASL_PLAINTEXT://$HOST:$PORT,INTERNAL://$HOST:$IPORT"
    INTER_BROKER_LISTENER=INTERNAL
    PROTOCOL_MAP="CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
  else
    LISTENERS="PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT"
    ADVERTISED_LISTENERS="PLAINTEXT://$HOST:$PORT"
    INTER_BROKER_LISTENER=PLAINTEXT
    PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  fi
}

render_config() {
  mkdir -p "$KDIR" "$DATA_DIR" "$LOG_DIR"
  set_listeners
  local mechanism_lower
  mechanism_lower="$(tr '[:upper:]' '[:lower:]' <<<"$SASL_MECHANISM")"
  {
    cat "$CONF_TEMPLATE"
    if ((SASL)); then printf '\n'; cat "$SASL_CONF"; fi
  } | sed -e "s|@HOST@|$HOST|g" \
      -e "s|@PORT@|$PORT|g" \
      -e "s|@CONTROLLER_PORT@|$CPORT|g" \
      -e "s|@DATA_DIR@|$DATA_DIR|g" \
      -e "s|@LISTENERS@|$LISTENERS|g" \
      -e "s|@ADVERTISED_LISTENERS@|$ADVERTISED_LISTENERS|g" \
      -e "s|@INTER_BROKER_LISTENER@|$INTER_BROKER_LISTENER|g" \
      -e "s|@PROTOCOL_MAP@|$PROTOCOL_MAP|g" \
      -e "s|@SASL_MECHANISM@|$SASL_MECHANISM|g" \
      -e "s|@SASL_MECHANISM_LOWER@|$mechanism_lower|g" \
      -e "s|@NODE_ID@|${NODE_ID:-1}|g" \
      -e "s|@VOTERS@|${VOTERS:-}|g" \
      >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

format_storage() {
  local java cid scram=()
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "storage already formatted (cluster $(awk -F= '/^cluster.id=/ {print $2}' "$DATA_DIR/meta.properties"))"
    if ((SASL)) && [[ ! -f "$KDIR/sasl.user" ]]; then
      die "$DATA_DIR was formatted without a SCRAM user; '$0 stop --wipe' first to start it with SASL"
    fi
    return 0
  fi
  java="$(java_bin)"
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cid="$(cat "$CLUSTER_ID_FILE")"
  else
    cid="$("$java" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a cluster id (got '$cid')"
    echo "$cid" >"$CLUSTER_ID_FILE"
  fi
  if ((SASL)); then
    local password
    password="$(sasl_password)"
    [[ "$password$SASL_USER" =~ [],=\[\"] ]] && die "SASL user and password must not contain , = [ ] or \""
    # On the format command line for the seconds it runs; it is stored salted and hashed, not as is.
    scram=(--add-scram "$SASL_MECHANISM=[name=$SASL_USER,password=$password]")
  fi
  log "formatting $DATA_DIR (cluster id $cid${scram:+, SCRAM user $SASL_USER})"
  # No --standalone: server.properties uses a static quorum (controller.quorum.voters),
  # so there is no dynamic voter set to bootstrap. See the comment there.
  if ! "$java" -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$LOG_DIR" \
      -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$CONF" "${scram[@]}" \
      >"$LOG_DIR/format.log" 2>&1; then
    tail_file "$LOG_DIR/format.log"
    die "kafka storage format failed"
  fi
  if ((SASL)); then echo "$SASL_MECHANISM $SASL_USER" >"$KDIR/sasl.user"; fi
}

# Last N lines of what this start appended to server.log (skips earlier runs).
tail_new_server_log() {
  local offset="$1" n="$2"
  [[ -s "$SERVER_LOG" ]] || return 0
  printf '%s\n' "----- last $n lines of $SERVER_LOG -----" >&2
  tail -c +"$((offset + 1))" "$SERVER_LOG" | tail -n "$n" | sed 's/^/    /' >&2
  printf '%s\n' "-----" >&2
}

# launch_broker: start the JVM for CONF in the background; sets pid and log_offset.
launch_broker() {
  local java
  java="$(java_bin)"
  log_offset=0
  [[ -f "$SERVER_LOG" ]] && log_offset="$(stat -c %s "$SERVER_LOG")"
  # shellcheck disable=SC2206
  local heap=(${KAFKA_HEAP_OPTS:-$HEAP_DEFAULT})
  # shellcheck disable=SC2206
  local perf=(${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true})
  # shellcheck disable=SC2206
  local extra=(${KAFKA_OPTS:-})
  {
    echo "===== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting kafka $KAFKA_VERSION on $HOST:$PORT (controller $CPORT)"
  } >>"$STDOUT_LOG"
  # setsid: own session, so Ctrl-C / job-control signals aimed at the caller's
  # terminal or process group do not reach the broker.
  nohup setsid "$java" "${heap[@]}" "${perf[@]}" \
    -Dlog4j2.configurationFile="$LOG4J_CONF" \
    -Dkafka.logs.dir="$LOG_DIR" \
    "${extra[@]}" \
    -cp "$LIBS/*" "$MAIN_CLASS" "$CONF" \
    >>"$STDOUT_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"
}

cmd_start() {
  local pid py="" t0 deadline log_offset=0 why=""
  if pid="$(running_pid)"; then
    set_listeners
    if ! grep -qx "listeners=$LISTENERS" "$CONF" 2>/dev/null; then
      die "a broker for $KDIR is already running (pid $pid) with other ports ($(grep '^listeners=' "$CONF" 2>/dev/null)); stop it first or use another ATTNFLOW_STATE_DIR"
    fi
    py="$(pick_python || true)"
    if port_open "$HOST" "$PORT" && { [[ -z "$py" ]] || probe_metadata "$py" >/dev/null 2>&1; }; then
      log "already running (pid $pid) on $HOST:$PORT"
      return 0
    fi
    log "running (pid $pid) but not ready yet; waiting"
  else
    cmd_fetch
    check_java_version
    rm -f "$PIDFILE"
    local ports=("$PORT" "$CPORT")
    if ((SASL)); then ports+=("$IPORT"); fi
    for p in "${ports[@]}"; do
      port_open "$HOST" "$p" && die "port $HOST:$p is already in use by another process (set ATTNFLOW_KAFKA_PORT / ATTNFLOW_KAFKA_CONTROLLER_PORT / ATTNFLOW_KAFKA_INTERNAL_PORT)"
    done
    render_config
    format_storage
    launch_broker
    log "started pid $pid (logs: $LOG_DIR), waiting up to ${START_TIMEOUT}s for readiness"
    py="$(pick_python || true)"
  fi

  t0=$SECONDS
  deadline=$((SECONDS + START_TIMEOUT))
  [[ -n "$py" ]] || warn "no python with kafka-python found; readiness = port open + 'Kafka Server started' in server.log"
  while ((SECONDS < deadline)); do
    if ! pid_alive "$pid"; then
      rm -f "$PIDFILE"
      tail_new_server_log "$log_offset" 30
      tail_file "$STDOUT_LOG" 20
      die "broker process $pid exited during startup (see $LOG_DIR)"
    fi
    if port_open "$HOST" "$PORT"; then
      if [[ -n "$py" ]]; then
        if why="$(probe_metadata "$py" 2>&1)"; then
          log "ready on $HOST:$PORT after $((SECONDS - t0))s (pid $pid, rss $(rss_of "$pid"))"
          return 0
        fi
      elif tail -c +"$((log_offset + 1))" "$SERVER_LOG" 2>/dev/null | grep -q 'Kafka Server started'; then
        log "ready on $HOST:$PORT after $((SECONDS - t0))s (pid $pid, rss $(rss_of "$pid"))"
        return 0
      fi
    fi
    sleep 1
  done
  [[ -n "$why" ]] && printf '%s\n' "last probe error: ${why##*$'\n'}" >&2
  tail_new_server_log "$log_offset" 40
  tail_file "$STDOUT_LOG" 20
  die "broker (pid $pid) not ready on $HOST:$PORT within ${START_TIMEOUT}s; it is left running, use '$0 stop' to stop it"
}

cmd_stop() {
  local wipe=0 pid
  for a in "$@"; do
    case "$a" in
      --wipe) wipe=1 ;;
      *) die "unknown stop option: $a" ;;
    esac
  done
  if pid="$(running_pid)"; then
    log "stopping pid $pid"
    kill_and_wait "$pid" "$STOP_TIMEOUT"
    log "stopped"
  else
    log "not running"
  fi
  rm -f "$PIDFILE"
  if ((wipe)); then
    rm -rf "$KDIR"
    log "wiped $KDIR"
  fi
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if port_open "$HOST" "$PORT"; then
      log "running (pid $pid) on $HOST:$PORT, rss $(rss_of "$pid")"
    else
      log "running (pid $pid) but $HOST:$PORT not accepting connections (starting or stuck)"
    fi
    return 0
  fi
  log "not running ($KDIR)"
  return 1
}

cmd_logs() {
  local follow=0 lines=100
  for a in "$@"; do
    case "$a" in
      -f|--follow) follow=1 ;;
      ''|*[!0-9]*) die "usage: $0 logs [-f] [LINES]" ;;
      *) lines="$a" ;;
    esac
  done
  [[ -f "$SERVER_LOG" ]] || die "no log yet at $SERVER_LOG"
  if ((follow)); then
    exec tail -n "$lines" -F "$SERVER_LOG"
  fi
  tail -n "$lines" "$SERVER_LOG"
}

# --------------------------------------------------------------------------- cluster

CLUSTER_NODES=3
CLUSTER_PORT="${ATTNFLOW_KAFKA_CLUSTER_PORT:-19092}"
CLUSTER_CPORT="${ATTNFLOW_KAFKA_CLUSTER_CONTROLLER_PORT:-19192}"
CLUSTER_ROOT="$ATTNFLOW_STATE_DIR/kafka-cluster"
CLUSTER_TIMEOUT="${ATTNFLOW_KAFKA_START_TIMEOUT:-180}"

cluster_bootstrap() {
  local n servers=()
  for ((n = 1; n <= CLUSTER_NODES; n++)); do servers+=("$HOST:$((CLUSTER_PORT + n - 1))"); done
  (IFS=,; echo "${servers[*]}")
}

# use_node N: point the single-broker globals (ports, dirs, config, pidfile) at cluster node N, so
# that render_config, format_storage, launch_broker and running_pid work on it unchanged.
use_node() {
  local n="$1" i voters=()
  [[ "$n" =~ ^[1-9]$ ]] && ((n <= CLUSTER_NODES)) || die "no cluster node '$n' (nodes are 1-$CLUSTER_NODES)"
  ((SASL)) && die "ATTNFLOW_KAFKA_SASL applies to the single broker only"
  for ((i = 1; i <= CLUSTER_NODES; i++)); do voters+=("$i@$HOST:$((CLUSTER_CPORT + i - 1))"); done
  NODE_ID="$n"
  VOTERS="$(IFS=,; echo "${voters[*]}")"
  PORT=$((CLUSTER_PORT + n - 1))
  CPORT=$((CLUSTER_CPORT + n - 1))
  KDIR="$CLUSTER_ROOT/node$n"
  DATA_DIR="$KDIR/data"
  LOG_DIR="$KDIR/logs"
  CONF="$KDIR/server.properties"
  PIDFILE="$KDIR/kafka.pid"
  CLUSTER_ID_FILE="$CLUSTER_ROOT/cluster.id"  # one id, shared by every node's storage
  STDOUT_LOG="$LOG_DIR/kafka.out"
  SERVER_LOG="$LOG_DIR/server.log"
  CONF_TEMPLATE="$SCRIPT_DIR/kafka/cluster.properties"
  HEAP_DEFAULT="-Xms128m -Xmx384m"
}

# start_node N: launch node N unless it runs; sets STARTED_PID to its pid.
STARTED_PID=""
start_node() {
  local pid log_offset=0
  use_node "$1"
  if pid="$(running_pid)"; then
    STARTED_PID="$pid"
    return 0
  fi
  rm -f "$PIDFILE"
  for p in "$PORT" "$CPORT"; do
    port_open "$HOST" "$p" && die "port $HOST:$p is already in use by another process (set ATTNFLOW_KAFKA_CLUSTER_PORT / ATTNFLOW_KAFKA_CLUSTER_CONTROLLER_PORT)"
  done
  mkdir -p "$CLUSTER_ROOT"
  render_config
  format_storage
  launch_broker
  log "node $1: started pid $pid on $HOST:$PORT (controller $CPORT)"
  STARTED_PID="$pid"
}

# wait_cluster PIDS...: until every node answers and sees all brokers registered.
wait_cluster() {
  local t0=$SECONDS py why="" n pid pids=("$@")
  py="$(pick_python)" || die "the cluster readiness probe needs a python with kafka-python (ATTNFLOW_PYTHON)"
  while ((SECONDS - t0 < CLUSTER_TIMEOUT)); do
    for ((n = 1; n <= CLUSTER_NODES; n++)); do
      pid="${pids[n - 1]}"
      if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
        use_node "$n"
        rm -f "$PIDFILE"
        tail_file "$SERVER_LOG" 30
        die "node $n (pid $pid) exited during startup (see $LOG_DIR)"
      fi
    done
    # Probe only once every port accepts: a probe against a closed port waits out its timeouts.
    for ((n = 1; n <= CLUSTER_NODES; n++)); do
      port_open "$HOST" $((CLUSTER_PORT + n - 1)) || { why="node $n: port $((CLUSTER_PORT + n - 1)) closed"; break; }
    done
    if ((n > CLUSTER_NODES)) && why="$(probe_metadata "$py" "$(cluster_bootstrap)" "$CLUSTER_NODES" 2>&1)"; then
      log "cluster ready after $((SECONDS - t0))s: ATTNFLOW_KAFKA_BOOTSTRAP=$(cluster_bootstrap)"
      return 0
    fi
    sleep 1
  done
  printf '%s\n' "last probe error: ${why##*$'\n'}" >&2
  die "cluster not ready within ${CLUSTER_TIMEOUT}s; nodes are left running, '$0 cluster stop' stops them"
}

cmd_cluster_start() {
  local n pids=()
  cmd_fetch
  check_java_version
  for ((n = 1; n <= CLUSTER_NODES; n++)); do start_node "$n"; pids+=("$STARTED_PID"); done
  wait_cluster "${pids[@]}"
}

# Every node gets TERM at once: stopped one by one, the last ones would wait for a controller quorum
# that is gone before their controlled shutdown gives up.
cmd_cluster_stop() {
  local wipe=0 n pid pids=()
  [[ "${1:-}" == --wipe ]] && wipe=1
  for ((n = 1; n <= CLUSTER_NODES; n++)); do
    use_node "$n"
    if pid="$(running_pid)"; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for pid in "${pids[@]}"; do kill_and_wait "$pid" "$STOP_TIMEOUT"; done
  for ((n = 1; n <= CLUSTER_NODES; n++)); do use_node "$n"; rm -f "$PIDFILE"; done
  log "cluster stopped (${#pids[@]} node(s) were running)"
  if ((wipe)); then rm -rf "$CLUSTER_ROOT"; log "wiped $CLUSTER_ROOT"; fi
}

cmd_cluster_status() {
  local n pid up=0
  for ((n = 1; n <= CLUSTER_NODES; n++)); do
    use_node "$n"
    if pid="$(running_pid)"; then
      log "node $n: running (pid $pid) on $HOST:$PORT, rss $(rss_of "$pid")"
      up=$((up + 1))
    else
      log "node $n: not running"
    fi
  done
  log "$up of $CLUSTER_NODES nodes running ($(cluster_bootstrap))"
  ((up > 0))
}

cmd_cluster_kill() {
  local pid
  use_node "${1:?usage: $0 cluster kill N}"
  pid="$(running_pid)" || die "node $1 is not running"
  kill -KILL "$pid"
  wait_pid_exit "$pid" 10 || die "node $1 (pid $pid) survived SIGKILL"
  rm -f "$PIDFILE"
  log "killed node $1 (pid $pid)"
}

# restart N: start node N again and wait until it is registered with the others.
cmd_cluster_restart() {
  local n pids=()
  use_node "${1:?usage: $0 cluster restart N}"
  for ((n = 1; n <= CLUSTER_NODES; n++)); do
    if ((n == $1)); then start_node "$n"; pids+=("$STARTED_PID"); else pids+=(""); fi
  done
  wait_cluster "${pids[@]}"
}

cmd_cluster() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    start) cmd_cluster_start ;;
    stop) cmd_cluster_stop "$@" ;;
    status) cmd_cluster_status ;;
    bootstrap) cluster_bootstrap ;;
    kill) cmd_cluster_kill "$@" ;;
    restart) cmd_cluster_restart "$@" ;;
    *) usage >&2; exit 2 ;;
  esac
}

usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    fetch) cmd_fetch "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    cluster) cmd_cluster "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
