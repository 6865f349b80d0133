#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft combined broker+controller) for attnflow dev/CI.
# No tarball download: broker jars come from Maven Central via deploy/kafka/pom.xml.
#
# Usage: deploy/kafka.sh fetch | start | stop [--wipe] | status | logs [-f] [LINES]
#
# Environment (all optional):
#   KAFKA_VERSION                   broker version (default 4.0.0; needs Java 17+)
#   ATTNFLOW_CACHE                  jar cache root (default ~/.cache/attnflow)
#   ATTNFLOW_STATE_DIR              state root (default <repo>/.attnflow); Kafka uses ./kafka
#   ATTNFLOW_KAFKA_HOST             listen/advertise address (default 127.0.0.1)
#   ATTNFLOW_KAFKA_PORT             client port (default 9092)
#   ATTNFLOW_KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   ATTNFLOW_KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   ATTNFLOW_KAFKA_STOP_TIMEOUT     seconds to wait after TERM before KILL (default 30)
#   ATTNFLOW_PYTHON                 python with kafka-python for the readiness probe
#   KAFKA_HEAP_OPTS                 default "-Xms256m -Xmx512m"
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
START_TIMEOUT="${ATTNFLOW_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${ATTNFLOW_KAFKA_STOP_TIMEOUT:-30}"

KDIR="$ATTNFLOW_STATE_DIR/kafka"
DATA_DIR="$KDIR/data"
LOG_DIR="$KDIR/logs"
CONF="$KDIR/server.properties"
PIDFILE="$KDIR/kafka.pid"
CLUSTER_ID_FILE="$KDIR/cluster.id"
STDOUT_LOG="$LOG_DIR/kafka.out"
SERVER_LOG="$LOG_DIR/server.log"
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

# Real metadata round trip: list topics and see this broker in the cluster.
probe_metadata() {
  local py="$1"
  timeout 20 "$py" - "$HOST:$PORT" <<'EOF'
import logging, sys
logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="attnflow-readiness",
                         request_timeout_ms=10000)
try:
    admin.list_topics()
    brokers = admin.describe_cluster().get("brokers") or []
    if not brokers:
        sys.exit("no live brokers in metadata yet")
finally:
    admin.close()
EOF
}

render_config() {
  mkdir -p "$KDIR" "$DATA_DIR" "$LOG_DIR"
  sed -e "s|@HOST@|$HOST|g" \
      -e "s|@PORT@|$PORT|g" \
      -e "s|@CONTROLLER_PORT@|$CPORT|g" \
      -e "s|@DATA_DIR@|$DATA_DIR|g" \
      "$CONF_TEMPLATE" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

format_storage() {
  local java cid
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "storage already formatted (cluster $(awk -F= '/^cluster.id=/ {print $2}' "$DATA_DIR/meta.properties"))"
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
  log "formatting $DATA_DIR (cluster id $cid)"
  # No --standalone: server.properties uses a static quorum (controller.quorum.voters),
  # so there is no dynamic voter set to bootstrap. See the comment there.
  if ! "$java" -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$LOG_DIR" \
      -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$CONF" \
      >"$LOG_DIR/format.log" 2>&1; then
    tail_file "$LOG_DIR/format.log"
    die "kafka storage format failed"
  fi
}

# Last N lines of what this start appended to server.log (skips earlier runs).
tail_new_server_log() {
  local offset="$1" n="$2"
  [[ -s "$SERVER_LOG" ]] || return 0
  printf '%s\n' "----- last $n lines of $SERVER_LOG -----" >&2
  tail -c +"$((offset + 1))" "$SERVER_LOG" | tail -n "$n" | sed 's/^/    /' >&2
  printf '%s\n' "-----" >&2
}

cmd_start() {
  local pid java py="" t0 deadline log_offset=0 why=""
  if pid="$(running_pid)"; then
    if ! grep -qx "listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT" "$CONF" 2>/dev/null; then
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
    for p in "$PORT" "$CPORT"; do
      port_open "$HOST" "$p" && die "port $HOST:$p is already in use by another process (set ATTNFLOW_KAFKA_PORT / ATTNFLOW_KAFKA_CONTROLLER_PORT)"
    done
    render_config
    format_storage
    java="$(java_bin)"
    [[ -f "$SERVER_LOG" ]] && log_offset="$(stat -c %s "$SERVER_LOG")"
    # shellcheck disable=SC2206
    local heap=(${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m})
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
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
