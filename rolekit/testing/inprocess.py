"""Run ``alembic`` and ``rolekit`` the way their command lines do, in this process.

A test suite runs these commands thousands of times; each subprocess spends
most of a second starting Python and importing SQLAlchemy and Alembic.  This
runs the very same entry points (``alembic.config.main``,
``rolekit.cli.main``) with the process state a subprocess would have -- the
working folder, the environment, fresh logging, stdout/stderr captured -- and
restores it afterwards, so the exit code and output are what the command line
gives.  Commands that must be killed or run concurrently still need a real
subprocess.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

#: one command at a time: the working folder, environment and streams are global
_LOCK = threading.Lock()


def _become(env: Mapping[str, str]) -> None:
    """Make the process environment *env*, touching only the names that differ.

    Tests run application threads that connect while a command runs, and
    libpq reads the C environment (``getenv``) at every connect.  Clearing
    and refilling it (an ``unsetenv``/``setenv`` per name, the array
    reallocated) under such a read crashed a worker with a segfault; setting
    only what differs leaves a handful of changes, none for most names.
    """
    for name in [n for n in os.environ if n not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    _become(env)
    try:
        yield
    finally:
        _become(saved)


@contextlib.contextmanager
def _fresh_logging() -> Iterator[None]:
    """Logging as a new process has it; what the command configures is undone after."""
    manager = logging.Logger.manager
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root.handlers = []
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers, level = saved_root
        root.setLevel(level)
        for name, logger in list(manager.loggerDict.items()):
            if not isinstance(logger, logging.Logger):
                continue
            if name in saved:
                logger.level, logger.handlers, logger.propagate, logger.disabled = saved[name]
            else:
                logger.handlers = []


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256  # sys.exit(-1) is 255 for a parent process
    return 1


def run(
    program: str, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m PROGRAM ARGS`` (``alembic`` or ``rolekit.cli``) here."""
    out, err = io.StringIO(), io.StringIO()
    with (
        _LOCK,
        _environment(env),
        contextlib.chdir(cwd),
        _fresh_logging(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        path = list(sys.path)
        try:
            if program == "alembic":
                from alembic.config import main as alembic_main

                alembic_main(argv=list(args), prog="alembic")
                code = 0
            else:
                from rolekit.cli import main as rolekit_main

                code = _exit_code(rolekit_main(list(args)))
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:  # what the interpreter would print
            traceback.print_exc(file=err)
            code = 1
        finally:
            sys.path[:] = path
    argv = [sys.executable, "-m", program, *args]
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def runnable(cmd: Sequence[str]) -> str | None:
    """The program of ``[python, -m, alembic|rolekit.cli, ...]``, if it can run here."""
    if threading.current_thread() is not threading.main_thread():
        return None
    python_module = len(cmd) >= 3 and cmd[0] == sys.executable and cmd[1] == "-m"
    return cmd[2] if python_module and cmd[2] in ("alembic", "rolekit.cli") else None
