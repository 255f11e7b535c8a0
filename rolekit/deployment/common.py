"""What every run needs of the deployment package, without the rest of it.

A no-op upgrade drains nothing and opens no standby or pooler: it needs
only these, and importing :mod:`.drain`, :mod:`.replicas`, :mod:`.usage`
and :mod:`.poolers` for them would cost it several milliseconds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rolekit.project.config import Settings

Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def check_urls(settings: Settings) -> None:
    """Parse every replica and pooler URL now: a bad one is refused before any
    change, not after a commit that then cannot wait for its replay."""
    primary = settings.require_url()
    if settings.replicas:
        # imported here: a project without standbys never needs the replica code
        from rolekit.deployment.replicas import replica_url

        for entry in settings.replicas:
            replica_url(primary, entry)
    if settings.poolers:
        # imported here: a project without poolers never needs the pooler code
        from rolekit.deployment.poolers import connect_params

        for entry in settings.poolers:
            connect_params(entry)
