"""Per-environment passwords, read from a git-ignored dotenv file, an age file or a SOPS file.

rolekit needs one password per role and per context (``dev``, ``test``,
``prod``...).  They live outside the migrations, in a file the developer keeps
next to the project:

* ``passwords.env`` -- plain dotenv, which must never be committed; or
* any path ending in ``.age`` -- the same dotenv content encrypted with `age
  <https://age-encryption.org>`_, which *can* be committed and shared; or
* any path whose name holds ``.sops.`` (``passwords.prod.sops.env``) -- a
  `SOPS <https://getsops.io>`_ dotenv file, each value encrypted on its own,
  read and written by the ``sops`` executable (extra ``rolekit[sops]``).

Each password is one line ``<role>.password.<context>=<password>``, e.g.
``my_app_tom.password.dev=...``.  The names mirror Liquibase property names so
that a project moving from Liquibase can keep its files.

The module is careful in three ways, because a password file is both a
foot-gun and a target:

* **No plaintext leaks.**  Passwords are wrapped in :class:`Secret`, whose
  ``repr``/``str`` are ``'<secret>'`` and which refuses to be pickled.  Error
  messages name the file, the key, the line and the context -- never a value,
  and never a line's content (a password pasted on a line of its own would be
  the "key" of that line).
* **No guessing.**  A malformed line, a duplicate key, binary junk, a huge
  file, a symlink, a wrong age identity: each is refused with a clear
  :class:`~rolekit.errors.SecretsError` instead of being half-read.
* **No home-made crypto.**  Parsing is python-dotenv's, encryption is age's
  (through pyrage) or SOPS's (its executable), randomness is :mod:`secrets`, fingerprints are HMAC
  keyed by the file's own random key (scrypt where a file has none).

Modules: ``_secret`` (the value type), ``_keys`` (key names, generation,
strength), ``_fingerprint``, ``_dotenv`` (strict reader and editor), ``_age``,
``_sops``, ``_file`` (:class:`SecretsFile`); file I/O is :mod:`rolekit._fileio`.
"""

from typing import TYPE_CHECKING, Any

from rolekit.secrets._dotenv import MAX_FILE_BYTES, MAX_LINE_BYTES
from rolekit.secrets._file import SecretsFile, contexts_in, git_tracks
from rolekit.secrets._fingerprint import FINGERPRINT_KEY, fingerprint
from rolekit.secrets._keys import (
    DEFAULT_MIN_LENGTH,
    DEFAULT_PASSWORD_LENGTH,
    PASSWORD_ALPHABET,
    check_strength,
    generate_password,
    secret_key,
)
from rolekit.secrets._secret import Secret
from rolekit.secrets._warnings import SecretsFileWarning

if TYPE_CHECKING:
    from rolekit.secrets._age import AGE_IDENTITY_ENV, AGE_IDENTITY_FILE_ENV, AGE_RECIPIENTS_ENV


def __getattr__(name: str) -> Any:
    """The age settings' names, without importing age support until asked (PEP 562)."""
    if name in ("AGE_IDENTITY_ENV", "AGE_IDENTITY_FILE_ENV", "AGE_RECIPIENTS_ENV"):
        from rolekit.secrets import _age

        return getattr(_age, name)
    raise AttributeError(f"module 'rolekit.secrets' has no attribute {name!r}")


__all__ = [
    "AGE_IDENTITY_ENV",
    "AGE_IDENTITY_FILE_ENV",
    "AGE_RECIPIENTS_ENV",
    "DEFAULT_MIN_LENGTH",
    "DEFAULT_PASSWORD_LENGTH",
    "FINGERPRINT_KEY",
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "PASSWORD_ALPHABET",
    "Secret",
    "SecretsFile",
    "SecretsFileWarning",
    "check_strength",
    "contexts_in",
    "fingerprint",
    "generate_password",
    "git_tracks",
    "secret_key",
]
