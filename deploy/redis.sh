#!/usr/bin/env bash
# Local Redis for attnflow dev/CI (AOF, appendfsync always; see deploy/redis.conf).
#
# Usage: deploy/redis.sh install | start | stop [--wipe] | status | logs [LINES]
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
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
