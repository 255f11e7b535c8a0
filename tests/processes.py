"""Whether a process the tests started (or a child of one) has ended."""

from __future__ import annotations

import time
from pathlib import Path


def gone(pid: int, timeout: float = 10) -> bool:
    """*pid* has ended within *timeout* seconds (a zombie waiting for init to reap
    it counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False
