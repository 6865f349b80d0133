# shellcheck shell=bash
# Shared helpers for deploy/kafka.sh and deploy/redis.sh. Source it; do not run it.
# The caller sets LOG_PREFIX (e.g. "kafka") before using log/die.

ATTNFLOW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ATTNFLOW_ROOT

# Absolute path (does not need to exist). Relative paths are taken from $PWD.
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

# Root of all runtime state (data, logs, pidfiles); overridable so tests can run
# a second stack side by side.
ATTNFLOW_STATE_DIR="$(abspath "${ATTNFLOW_STATE_DIR:-$ATTNFLOW_ROOT/.attnflow}")"

log()  { printf '[%s] %s\n' "${LOG_PREFIX:-attnflow}" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "${LOG_PREFIX:-attnflow}" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "${LOG_PREFIX:-attnflow}" "$*" >&2; exit 1; }

# pid_alive PID -> 0 if a process with that pid exists (and is not a zombie).
pid_alive() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
  [[ "$state" != "Z" ]]
}

# pid_cmdline_has PID STRING -> 0 if the process command line contains STRING
# (guards against acting on a recycled pid).
pid_cmdline_has() {
  local pid="$1" needle="$2"
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# read_pidfile FILE -> prints the pid stored in FILE (empty if none).
read_pidfile() {
  [[ -f "$1" ]] || return 0
  tr -dc '0-9' <"$1" 2>/dev/null || true
}

# port_open HOST PORT -> 0 if something accepts TCP connections there.
port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_pid_exit PID SECONDS -> 0 once PID is gone, 1 on timeout.
wait_pid_exit() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 5; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.2
  done
  ! pid_alive "$pid"
}

# kill_and_wait PID SECONDS: TERM, wait up to SECONDS, then KILL.
kill_and_wait() {
  local pid="$1" secs="$2"
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_pid_exit "$pid" "$secs"; then
    warn "pid $pid still alive after ${secs}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_exit "$pid" 10 || die "could not kill pid $pid"
  fi
}

# rss_of PID -> resident set size in MiB.
rss_of() {
  awk '/^VmRSS:/ {printf "%d MiB\n", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"
}

# Print the last N lines of a file, indented, to stderr (used in error messages).
tail_file() {
  local file="$1" n="${2:-40}"
  if [[ -s "$file" ]]; then
    printf '%s\n' "----- last $n lines of $file -----" >&2
    tail -n "$n" "$file" | sed 's/^/    /' >&2
    printf '%s\n' "-----" >&2
  fi
}
