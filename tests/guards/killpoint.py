"""Run the rolekit CLI and signal it at one exact point: ``killpoint.py TARGET SIGNAL -- ARGS``.

TARGET is ``module:attribute`` (``rolekit.project.state:RotationState.save``);
when the process reaches it, it sends itself SIGNAL (``SIGKILL`` or
``SIGTERM``) before the call, so a test can stop a run between two of its
steps deterministically, without a test hook in rolekit itself.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import time
from typing import Any


def _install(target: str, signum: int) -> None:
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        print(
            f"killpoint: {target} reached, sending {signal.Signals(signum).name}",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), signum)
        time.sleep(5)  # SIGTERM: the handler raises here; SIGKILL never returns
        return original(*args, **kwargs)

    setattr(owner, name, hooked)


def main() -> int:
    target, signame, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: killpoint.py TARGET SIGNAL -- ARGS"
    from rolekit.cli import main as rolekit_main

    _install(target, getattr(signal, signame))
    return rolekit_main(args)


if __name__ == "__main__":
    sys.exit(main())
