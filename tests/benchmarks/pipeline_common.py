"""What every part of the pipeline benchmark shares: its progress log and a free local port."""
from __future__ import annotations

import socket
import sys
import time


def log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
