#!/usr/bin/env bash
# Local Redis for attnflow dev/CI (AOF, appendfsync always; see deploy/redis.conf).
#
# Usage: deploy/redis.sh install | start | stop [--wipe] | status | logs [LINES]
#        deploy/redis.sh cluster start | stop [--wipe] | status | url | kill PORT | restart PORT
#
# `cluster` runs a Redis Cluster on loopback: ATTNFLOW_REDIS_CLUSTER_MASTERS masters (default 3) with
# ATTNFLOW_REDIS_CLUSTER_REPLICAS replicas each (default 1) on ports from ATTNFLOW_REDIS_CLUSTER_PORT
# (default 7001), every node with the same AOF settings as the single server. `url` prints the
# ATTNFLOW_REDIS_URL that names it; `kill PORT` SIGKILLs one node (fault tests), `restart PORT`
# starts it again (it rejoins as a replica if it was failed over).
#
# Environment (all optional):
#   ATTNFLOW_STATE_DIR            state root (default <repo>/.attnflow); Redis uses ./redis
#   ATTNFLOW_REDIS_HOST           bind address (default 127.0.0.1)
#   ATTNFLOW_REDIS_PORT           port (default 6379)
#   ATTNFLOW_REDIS_START_TIMEOUT  seconds to wait for PONG (default 20)
#   ATTNFLOW_REDIS_STOP_TIMEOUT   seconds to wait after TERM before KILL (default 30)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
source "$SCRIPT_DIR/lib.sh"
LOG_PREFIX=redis

HOST="${ATTNFLOW_REDIS_HOST:-127.0.0.1}"
PORT="${ATTNFLOW_REDIS_PORT:-6379}"
START_TIMEOUT="${ATTNFLOW_REDIS_START_TIMEOUT:-20}"
STOP_TIMEOUT="${ATTNFLOW_REDIS_STOP_TIMEOUT:-30}"
CONF="$SCRIPT_DIR/redis.conf"
RDIR="$ATTNFLOW_STATE_DIR/redis"
PIDFILE="$RDIR/redis.pid"
LOGFILE="$RDIR/redis.log"

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

cmd_install() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    log "redis-server already installed ($(redis-server --version | awk '{print $3}'))"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || die "redis-server not found and apt-get unavailable; install Redis 6+ manually"
  # Keep the package's postinst from starting a system-wide redis on 6379 (which
  # would collide with ours): a policy-rc.d exiting 101 vetoes service starts for
  # both invoke-rc.d and deb-systemd-invoke. Docker images usually have one already.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e "$policy" ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod +x $policy"
    added_policy=1
  fi
  log "installing redis-server with apt-get"
  local rc=0
  {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-tools >/dev/null
  } || rc=$?
  if ((added_policy)); then as_root rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get install redis-server failed (rc=$rc)"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
  log "installed $(redis-server --version | awk '{print $3}')"
}

ping_ok() {
  [[ "$(timeout 5 redis-cli -h "$HOST" -p "$PORT" ping 2>/dev/null)" == "PONG" ]]
}

# Prints the pid of OUR redis (from the pidfile), if it is running.
running_pid() {
  local pid
  pid="$(read_pidfile "$PIDFILE")"
  if [[ -n "$pid" ]] && pid_alive "$pid" && pid_cmdline_has "$pid" "redis-server"; then
    echo "$pid"
    return 0
  fi
  return 1
}

cmd_start() {
  local pid t0
  if pid="$(running_pid)"; then
    # Redis sets its process title to "redis-server HOST:PORT".
    pid_cmdline_has "$pid" ":$PORT" ||
      die "redis for $RDIR is already running (pid $pid, $(tr -s '\0 ' '  ' <"/proc/$pid/cmdline" | sed 's/ *$//')) on another port; stop it first or use another ATTNFLOW_STATE_DIR"
    if ping_ok; then
      log "already running (pid $pid) on $HOST:$PORT"
      return 0
    fi
  else
    command -v redis-server >/dev/null 2>&1 || cmd_install
    rm -f "$PIDFILE"
    port_open "$HOST" "$PORT" &&
      die "port $HOST:$PORT is already in use by another process (set ATTNFLOW_REDIS_PORT)"
    mkdir -p "$RDIR"
    printf '===== %s starting redis on %s:%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$HOST" "$PORT" >>"$LOGFILE"
    # Overrides go on the command line (they win over the file), no templating.
    if ! redis-server "$CONF" \
        --port "$PORT" \
        --bind "$HOST" \
        --dir "$RDIR" \
        --pidfile "$PIDFILE" \
        --logfile "$LOGFILE" \
        --daemonize yes >>"$LOGFILE" 2>&1; then
      tail_file "$LOGFILE" 20
      die "redis-server failed to start"
    fi
  fi
  t0=$SECONDS
  while ((SECONDS - t0 < START_TIMEOUT)); do
    if ping_ok; then
      pid="$(read_pidfile "$PIDFILE")"
      log "ready on $HOST:$PORT after $((SECONDS - t0))s (pid ${pid:-?}, dir $RDIR)"
      return 0
    fi
    sleep 0.2
  done
  tail_file "$LOGFILE" 30
  die "redis not answering PING on $HOST:$PORT within ${START_TIMEOUT}s"
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
    # SIGTERM = graceful SHUTDOWN (AOF flushed and fsynced), aimed at our pid only
    # rather than at whatever happens to listen on the port.
    kill_and_wait "$pid" "$STOP_TIMEOUT"
    log "stopped"
  else
    log "not running"
  fi
  rm -f "$PIDFILE"
  if ((wipe)); then
    rm -rf "$RDIR"
    log "wiped $RDIR"
  fi
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    if ping_ok; then
      log "running (pid $pid) on $HOST:$PORT, rss $(rss_of "$pid")"
    else
      log "running (pid $pid) but no PONG on $HOST:$PORT"
    fi
    return 0
  fi
  log "not running ($RDIR)"
  return 1
}

cmd_logs() {
  local lines="${1:-100}"
  [[ -f "$LOGFILE" ]] || die "no log yet at $LOGFILE"
  tail -n "$lines" "$LOGFILE"
}


# --------------------------------------------------------------------------- cluster

CLUSTER_PORT="${ATTNFLOW_REDIS_CLUSTER_PORT:-7001}"
CLUSTER_MASTERS="${ATTNFLOW_REDIS_CLUSTER_MASTERS:-3}"
CLUSTER_REPLICAS="${ATTNFLOW_REDIS_CLUSTER_REPLICAS:-1}"
# How long a master may be unreachable before its replica takes over; short so that fault tests
# see a failover within seconds (Redis's default is 15 s).
CLUSTER_NODE_TIMEOUT_MS="${ATTNFLOW_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
CDIR="$ATTNFLOW_STATE_DIR/redis-cluster"

cluster_ports() {
  local n=$((CLUSTER_MASTERS * (1 + CLUSTER_REPLICAS))) i
  for ((i = 0; i < n; i++)); do echo $((CLUSTER_PORT + i)); done
}

node_pid() {
  local port="$1" pid
  pid="$(read_pidfile "$CDIR/$port/redis.pid")"
  if [[ -n "$pid" ]] && pid_alive "$pid" && pid_cmdline_has "$pid" ":$port"; then
    echo "$pid"
    return 0
  fi
  return 1
}

node_cli() { timeout 5 redis-cli -h "$HOST" -p "$1" "${@:2}" 2>/dev/null; }

start_node() {
  local port="$1" dir="$CDIR/$1"
  node_pid "$port" >/dev/null && return 0
  port_open "$HOST" "$port" && die "port $HOST:$port is already in use by another process"
  mkdir -p "$dir"
  redis-server "$CONF" --port "$port" --bind "$HOST" --dir "$dir" --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log" --daemonize yes --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT_MS" >>"$dir/redis.log" 2>&1 ||
    { tail_file "$dir/redis.log" 20; die "redis-server on port $port failed to start"; }
}

cluster_ok() {
  local port
  for port in $(cluster_ports); do
    node_cli "$port" cluster info | grep -q '^cluster_state:ok' || return 1
  done
}

cluster_url() {
  local urls=() port
  for port in $(cluster_ports | head -n "$CLUSTER_MASTERS"); do urls+=("$HOST:$port"); done
  (IFS=,; echo "redis+cluster://${urls[*]}")
}

cmd_cluster_start() {
  local port t0 nodes=()
  command -v redis-server >/dev/null 2>&1 || cmd_install
  for port in $(cluster_ports); do
    start_node "$port"
    nodes+=("$HOST:$port")
  done
  t0=$SECONDS
  for port in $(cluster_ports); do
    until [[ "$(node_cli "$port" ping)" == PONG ]]; do
      ((SECONDS - t0 < START_TIMEOUT)) || die "node $port not answering PING within ${START_TIMEOUT}s"
      sleep 0.2
    done
  done
  # A node that knows only itself has never joined a cluster: create it once.
  if [[ "$(node_cli "$CLUSTER_PORT" cluster info | awk -F: '/^cluster_known_nodes/ {print $2}' | tr -d '\r')" == 1 ]]; then
    log "creating cluster: $CLUSTER_MASTERS masters, $CLUSTER_REPLICAS replica(s) each"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$CLUSTER_REPLICAS" --cluster-yes >>"$CDIR/create.log" 2>&1 ||
      { tail_file "$CDIR/create.log" 30; die "redis-cli --cluster create failed"; }
  fi
  until cluster_ok; do
    ((SECONDS - t0 < START_TIMEOUT)) || die "cluster not in state ok within ${START_TIMEOUT}s"
    sleep 0.2
  done
  log "cluster ready after $((SECONDS - t0))s: ATTNFLOW_REDIS_URL=$(cluster_url)"
}

cmd_cluster_stop() {
  local wipe=0 port pid
  [[ "${1:-}" == --wipe ]] && wipe=1
  for port in $(cluster_ports); do
    if pid="$(node_pid "$port")"; then kill_and_wait "$pid" "$STOP_TIMEOUT"; fi
    rm -f "$CDIR/$port/redis.pid"
  done
  log "cluster stopped"
  if ((wipe)); then rm -rf "$CDIR"; log "wiped $CDIR"; fi
}

cmd_cluster_status() {
  local port role up=0
  for port in $(cluster_ports); do
    if node_pid "$port" >/dev/null; then
      role="$(node_cli "$port" role | head -1)"
      log "node $port: running ($role)"
      up=$((up + 1))
    else
      log "node $port: not running"
    fi
  done
  cluster_ok && log "cluster_state ok ($(cluster_url))" || log "cluster_state not ok"
  ((up > 0))
}

cmd_cluster() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    start) cmd_cluster_start ;;
    stop) cmd_cluster_stop "$@" ;;
    status) cmd_cluster_status ;;
    url) cluster_url ;;
    kill) local pid; pid="$(node_pid "${1:?port}")" || die "node ${1} is not running"; kill -KILL "$pid"
          wait_pid_exit "$pid" 10; rm -f "$CDIR/$1/redis.pid"; log "killed node $1 (pid $pid)" ;;
    restart) start_node "${1:?port}"; log "node $1 started" ;;
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
    install) cmd_install "$@" ;;
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
