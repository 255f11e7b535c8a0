"""The secret value type: a password that does not show itself."""

from __future__ import annotations

import hmac
from typing import NoReturn


class Secret:
    """A password that does not show itself.

    Wrapping the plain ``str`` keeps it out of tracebacks with locals, log
    lines, ``repr`` of containers and pickles (multiprocessing, caches) by
    accident; :meth:`reveal` is the one explicit way to get the value, which
    makes every use of a plaintext easy to find in review.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            # Do not format ``value``: it may be the password as bytes.
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """Return the plaintext; call it only where the password is used."""
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    def __str__(self) -> str:
        return "<secret>"

    def __format__(self, format_spec: str) -> str:
        # f"{secret}" must not be a way around __str__.
        return "<secret>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing does not leak how much of it matched.
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        # A pickle is a plaintext copy on disk or in a pipe: refuse it.
        raise TypeError("a Secret cannot be pickled; pass it by other means")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: object) -> Secret:
        return self
