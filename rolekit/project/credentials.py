"""Both members' credentials, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rolekit.secrets import Secret

#: how much of a name a log line or message shows
_SHOWN_CHARS: Final = 64


def shown(name: str | None) -> str:
    """A user or family name read from a source, fit for a log line or a message.

    Sources are written by others (a mounted document, the environment):
    ``repr`` escapes line breaks and control characters, so a name cannot
    forge log lines, and a long one is cut.
    """
    if name is None:
        return "none"
    return repr(name[:_SHOWN_CHARS]) + ("..." if len(name) > _SHOWN_CHARS else "")


def _check_pair(pair: object, what: str) -> tuple[str, Secret]:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(f"Credentials.{what} must be a (user, Secret) tuple")
    user, secret = pair
    if not isinstance(user, str) or not user or "\0" in user:
        raise ValueError(f"Credentials.{what}: the user must be a non-empty string")
    if not isinstance(secret, Secret):
        # Do not format ``secret``: it may be the password as a plain str.
        raise TypeError(
            f"Credentials.{what}: the password must be a rolekit.secrets.Secret, "
            f"not {type(secret).__name__} (use Credentials.of() to wrap plain strings)"
        )
    return user, secret


@dataclass(frozen=True)
class Credentials:
    """Both members' logins, as one immutable value.

    A fetch returns a whole new value, so a reader never sees the preferred
    user of one version with the password of another.  Passwords are
    :class:`~rolekit.secrets.Secret`, so printing or logging a
    ``Credentials`` shows ``<secret>``.

    :ivar preferred: ``(user, password)`` new connections use.
    :ivar alternate: ``(user, password)`` of the other member, tried when the
        preferred one is rejected; ``None`` when unknown.
    """

    preferred: tuple[str, Secret]
    alternate: tuple[str, Secret] | None = None

    def __post_init__(self) -> None:
        user = _check_pair(self.preferred, "preferred")[0]
        if self.alternate is not None and _check_pair(self.alternate, "alternate")[0] == user:
            raise ValueError(f"Credentials: the alternate user is the preferred one, {user!r}")

    @classmethod
    def of(
        cls,
        user: str,
        password: str | Secret,
        alternate_user: str | None = None,
        alternate_password: str | Secret | None = None,
    ) -> Credentials:
        """Build credentials from plain strings (e.g. a vault response).

        :raises ValueError: only one of ``alternate_user`` and
            ``alternate_password`` is given.
        """
        if (alternate_user is None) != (alternate_password is None):
            raise ValueError("give both alternate_user and alternate_password, or neither")

        def wrap(value: str | Secret) -> Secret:
            return value if isinstance(value, Secret) else Secret(value)

        alternate = None
        if alternate_user is not None and alternate_password is not None:
            alternate = (alternate_user, wrap(alternate_password))
        return cls((user, wrap(password)), alternate)

    @property
    def users(self) -> tuple[str, ...]:
        """The preferred user, then the alternate one if known."""
        return tuple(user for user, _ in self.pairs())

    def pairs(self) -> tuple[tuple[str, Secret], ...]:
        """``(user, password)`` in the order to try them."""
        if self.alternate is None:
            return (self.preferred,)
        return (self.preferred, self.alternate)
