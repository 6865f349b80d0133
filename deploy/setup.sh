#!/usr/bin/env bash
# Install what attnflow needs on a fresh Debian machine: Java + Maven (for the Kafka jars),
# redis-server, and a Python 3.11 virtual environment in .venv with the project installed.
# Idempotent; run from anywhere. Set ATTNFLOW_EXTRAS to change pip extras (default test,eval).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "[setup] installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"attnflow pins jax 0.10.2, which needs Python 3.11; got {sys.version}"'
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # missing, or left half-made by an interrupted run
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${ATTNFLOW_EXTRAS:-test,eval}]"
.venv/bin/python -c "import jax, faust, kafka, redis, orjson; print('[setup] ok: jax', jax.__version__, '| faust', faust.__version__, '| kafka-python', kafka.__version__)"
