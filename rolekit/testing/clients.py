"""Applications in a thread, for tests and benchmarks of a rotation.

An :class:`AppClient` behaves like the clients a rotation must not break: a
job that connects now and then for a few milliseconds, or a reader that
stays connected.  It counts its attempts and failures, and
:meth:`AppClient.switch` moves it to new credentials, as an application that
picked up ``rolekit creds``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2


class AppClient:
    """An application in a thread: every *interval* seconds it connects, runs
    ``SELECT 1``, holds the connection *hold* seconds and disconnects; with
    *keep* it stays connected and only queries (a reader on a pool).
    Attempts and failures are counted; :meth:`switch` moves it to other
    credentials between two attempts, as an app that picked up new ones."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        interval: float = 1.0,
        hold: float = 0.02,
        keep: bool = False,
    ) -> None:
        self._connect = connect
        self.interval, self.hold, self.keep = interval, hold, keep
        self.attempts = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._switched = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def switch(self, connect: Callable[[], Any]) -> None:
        with self._lock:
            self._connect = connect
            self._switched = True

    def _run(self) -> None:
        conn: Any = None
        while not self._stop.is_set():
            self.attempts += 1
            try:
                with self._lock:
                    if self._switched and conn is not None:
                        conn.close()
                        conn = None
                    self._switched = False
                    connect = self._connect
                if conn is None:
                    conn = connect()
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                time.sleep(self.hold)
            except psycopg2.Error as exc:
                self.failures.append(str(exc).strip().splitlines()[0])
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            if not self.keep and conn is not None:
                conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def __enter__(self) -> AppClient:
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.attempts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
