"""Warnings about secrets files that work but are kept unsafely."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_PACKAGE = str(Path(__file__).parent)


class SecretsFileWarning(UserWarning):
    """A secrets file that works but is kept unsafely (e.g. world-readable)."""


def warn(message: str) -> None:
    """Warn both ways: ``warnings`` for tests and tools, logging for ops.

    The warning is attributed to the first caller outside this package, so
    that filters and the printed location point at the user's code.
    """
    level = 1
    frame = sys._getframe(0)
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).parent) == _PACKAGE:
        frame = frame.f_back
        level += 1
    warnings.warn(message, SecretsFileWarning, stacklevel=level)
    logger.warning("%s", message)
