"""SCRAM verifiers of the passwords a run sends, each computed while the previous one is stored.

Both ends pay for a password: the client derives the verifier
(``encrypt_password``, a PBKDF2 that holds the GIL), and the server, on
``ALTER ROLE ... PASSWORD``, runs the same derivation again to refuse an
empty password.  Done one after the other, a run over hundreds of members
waits for both in turn.  :class:`Ahead` derives the next verifier in a
thread while the server works on the current statement (psycopg2 releases
the GIL while it waits for the server), so the two overlap.

Only psycopg2's ``encrypt_password`` derives verifiers, as before, with the
same algorithm and, checked, the same iteration count.  It runs on a
connection of its own: libpq does not allow one connection to be used from
two threads (``PQencryptPasswordConn`` resets its error state), and the
migration's is in use meanwhile.  That connection sends no statement.  When
it cannot be opened, or reports another iteration count, every verifier is
derived on the migration's connection, as without this module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from psycopg2.extensions import encrypt_password

from rolekit.errors import first_line
from rolekit.secrets import Secret

log = logging.getLogger(__name__)

ALGORITHM = "scram-sha-256"
#: below this many passwords a second connection costs more than it saves
MIN_PASSWORDS = 8
#: the server reports its ``scram_iterations`` (16+); libpq derives with it
_ITERATIONS = "scram_iterations"


def derive(secret: Secret, role: str, connection: Any) -> str:
    """The SCRAM verifier of *secret* for *role*, by psycopg2 on *connection*."""
    return str(encrypt_password(secret.reveal(), role, connection, ALGORITHM))


class Ahead:
    """Derives the verifiers of *pending* (in the order they will be asked for) one ahead.

    The main thread asks with :meth:`take`; the worker only ever derives the
    one the main thread allowed with :meth:`start_next`, right before it
    sends a statement, so the two do not compete for the GIL while the main
    thread has Python to run.
    """

    def __init__(
        self,
        pending: Sequence[tuple[str, Secret]],
        open_connection: Callable[[], Any],
        iterations: str | None,
    ) -> None:
        self._pending = list(pending)
        self._open, self._iterations = open_connection, iterations
        self._cond = threading.Condition()
        #: index of the next verifier the main thread is expected to ask for
        self._next = 0
        #: index the worker derives (or may derive) now
        self._job: int | None = None
        self._done: dict[int, str] = {}
        self._ready = False
        self._closed = False
        #: verifiers handed out that the worker had derived (the rest were derived on the
        #: main connection)
        self.taken_ahead = 0
        self._thread = threading.Thread(target=self._work, name="rolekit-verifiers", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            connection = self._open()
        except Exception as exc:  # any driver or pool failure: derive on the main connection
            log.debug(
                "verifiers are derived one by one: no second connection (%s)", first_line(exc)
            )
            return
        try:
            if connection.get_parameter_status(_ITERATIONS) != self._iterations:
                log.debug("verifiers are derived one by one: the second connection differs")
                return
            with self._cond:
                if self._closed:  # connecting took longer than the run needed it
                    return
                self._ready = True
                if self._job is None and self._next < len(self._pending):
                    self._job = self._next  # start on the one the main thread needs next
            while True:
                with self._cond:
                    while self._job is None and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    index = self._job
                assert index is not None
                role, secret = self._pending[index]
                try:
                    verifier: str | None = derive(secret, role, connection)
                except Exception:  # the main thread derives it again and reports the error
                    verifier = None
                with self._cond:
                    if verifier is not None:
                        self._done[index] = verifier
                    self._job = None
                    self._cond.notify_all()
        finally:
            with self._cond:  # whatever ended it, the main thread derives the rest
                self._ready, self._job = False, None
                self._cond.notify_all()
            connection.close()

    def take(self, role: str, secret: Secret, main_connection: Any) -> str:
        """The verifier of *secret* for *role*: derived ahead if it was, else now."""
        with self._cond:
            index = next(
                (
                    i
                    for i in range(self._next, len(self._pending))
                    if self._pending[i][0] == role and self._pending[i][1] is secret
                ),
                None,
            )
            verifier = None
            if index is not None:
                self._next = index + 1
                while self._job == index:  # the worker is on it
                    self._cond.wait()
                verifier = self._done.pop(index, None)
        if verifier is None:
            return derive(secret, role, main_connection)
        self.taken_ahead += 1
        return verifier

    def start_next(self) -> None:
        """Let the worker derive the next verifier: call it right before sending a
        statement.  Any earlier, and a write to the log (which releases the GIL)
        would let the worker hold the GIL for a whole derivation meanwhile."""
        with self._cond:
            if self._ready and self._job is None and self._next < len(self._pending):
                self._job = self._next
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._done.clear()
            self._cond.notify_all()
            ready = self._ready
        # A ready worker is at most one derivation from its end; one still
        # connecting closes its connection itself when it gets one.
        if ready:
            self._thread.join()
