"""Per-environment passwords, read from a git-ignored dotenv file or an age file.

rolekit needs one password per role and per context (``dev``, ``test``,
``prod``...).  They live outside the migrations, in a file the developer keeps
next to the project:

* ``passwords.env`` -- plain dotenv, which must never be committed; or
* any path ending in ``.age`` -- the same dotenv content encrypted with `age
  <https://age-encryption.org>`_, which *can* be committed and shared.

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
  (through pyrage), randomness is :mod:`secrets`, slow hashing is
  :func:`hashlib.scrypt`.

Values are taken literally: unlike ``dotenv_values`` we do not expand
``${VAR}``, since a password may well contain ``$``.
"""

from __future__ import annotations

import base64
import codecs
import errno
import fcntl
import hashlib
import hmac
import importlib
import io
import logging
import os
import re
import secrets as _stdlib_secrets
import stat
import string
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, NoReturn, Protocol

from dotenv.parser import parse_stream

from rolekit.contexts import check_context_name
from rolekit.errors import RoleNameError, SecretsError

__all__ = [
    "AGE_IDENTITY_ENV",
    "AGE_IDENTITY_FILE_ENV",
    "AGE_RECIPIENTS_ENV",
    "DEFAULT_MIN_LENGTH",
    "DEFAULT_SECRETS_FILE",
    "MAX_FILE_BYTES",
    "MAX_LINE_BYTES",
    "Secret",
    "SecretsFile",
    "SecretsFileWarning",
    "check_strength",
    "contexts_in",
    "fingerprint",
    "generate_password",
    "secret_key",
]

logger = logging.getLogger("rolekit.secrets")

#: file used when the configuration names none
DEFAULT_SECRETS_FILE: Final = "passwords.env"
#: shortest password :func:`check_strength` accepts unless told otherwise
DEFAULT_MIN_LENGTH: Final = 16
#: a line longer than this is refused: no password needs it, junk does
MAX_LINE_BYTES: Final = 64 * 1024
#: a (decrypted) file larger than this is refused before it is read
MAX_FILE_BYTES: Final = 1024 * 1024
#: an age file may be larger than its plaintext (header, tags, armor)
_MAX_AGE_FILE_BYTES: Final = 2 * MAX_FILE_BYTES
#: identity files hold a handful of keys and comments
_MAX_IDENTITY_FILE_BYTES: Final = 64 * 1024

#: path of an age identity file (comments and several keys allowed)
AGE_IDENTITY_FILE_ENV: Final = "ROLEKIT_AGE_IDENTITY_FILE"
#: an age identity itself, ``AGE-SECRET-KEY-1...``
AGE_IDENTITY_ENV: Final = "ROLEKIT_AGE_IDENTITY"
#: extra recipients (``age1...``, comma-separated) to encrypt to when writing
AGE_RECIPIENTS_ENV: Final = "ROLEKIT_AGE_RECIPIENTS"

#: alphabet of :func:`generate_password`: nothing dotenv, a shell or a URL
#: would need to quote or escape
PASSWORD_ALPHABET: Final = string.ascii_letters + string.digits + "-_"

#: scrypt cost of :func:`fingerprint`: ~16 MiB and tens of milliseconds, so
#: that a leaked checksum cannot cheaply be brute-forced back to a password
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_FINGERPRINT_CACHE_SIZE: Final = 1024

_AGE_MAGIC: Final = b"age-encryption.org/v1\n"
_AGE_ARMOR_BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
_AGE_ARMOR_END: Final = b"-----END AGE ENCRYPTED FILE-----"

# Role names may hold almost anything PostgreSQL allows, but not what would
# break a dotenv key; contexts follow rolekit.contexts' rule (no dot), so the
# key splits uniquely.
_ROLE_RE: Final = re.compile(r"[^\s=#'\"\\]+")
_KEY_RE: Final = re.compile(r"(?P<role>.+)\.password\.(?P<context>[^.]+)")
# bytes no text file holds: C0 controls but tab, LF and CR, and DEL
_BINARY_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# a value that needs no quoting in dotenv
_PLAIN_VALUE_RE: Final = re.compile(r"[A-Za-z0-9_\-.~+/:@%,=]+")
_NEWLINE_RE: Final = re.compile(r"\r\n|\n|\r")
_LEADING_SPACE_RE: Final = re.compile(r"\s*")
_EOL_RE: Final = re.compile(r"(?:\r\n|\n|\r)\Z")


class SecretsFileWarning(UserWarning):
    """A secrets file that works but is kept unsafely (e.g. world-readable)."""


# ---------------------------------------------------------------------------
# Secret


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


# ---------------------------------------------------------------------------
# Keys, generation, strength, fingerprints


def secret_key(role: str, context: str) -> str:
    """Return the dotenv key of ``role``'s password in ``context``.

    The form ``<role>.password.<context>`` mirrors Liquibase property names
    so existing files can be reused.  Contexts are case-insensitive (as in
    Liquibase), so the context is lower-cased: ``Dev`` and ``dev`` share a
    key.

    :raises RoleNameError: ``role`` is empty or holds a character a dotenv
        key cannot carry (whitespace, ``=``, ``#``, quotes, backslash).
    :raises ContextExpressionError: ``context`` is empty or holds such a
        character or a dot.
    """
    if not _ROLE_RE.fullmatch(role):
        raise RoleNameError(
            f"role name {role!r} cannot be used in a secrets file key: it must "
            "be non-empty without whitespace, '=', '#', quotes or backslashes"
        )
    return f"{role}.password.{check_context_name(context)}"


def _context_of(key: str) -> str | None:
    """Return the context of a rolekit key, or ``None`` for another key."""
    match = _KEY_RE.fullmatch(key)
    return match["context"] if match else None


def contexts_in(secrets: SecretsFile) -> set[str]:
    """The contexts that keys of *secrets* name (``role.password.<context>``)."""
    return {ctx for key in secrets.load() if (ctx := _context_of(key)) is not None}


def generate_password(length: int = 32) -> str:
    """Return a random password of ``length`` characters.

    The alphabet (letters, digits, ``-``, ``_``) needs no quoting in dotenv,
    a shell or a connection URL, and still gives almost 6 bits per
    character: the default 32 characters carry about 190 bits.

    :raises ValueError: ``length`` is less than 1.
    """
    if length < 1:
        raise ValueError(f"password length must be at least 1, not {length}")
    return "".join(_stdlib_secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def check_strength(
    role: str, context: str, secret: Secret, min_length: int = DEFAULT_MIN_LENGTH
) -> None:
    """Refuse a password shorter than ``min_length`` characters.

    Length is what matters for the random passwords rolekit expects; a short
    one usually means a placeholder (``changeme``) was left in the file.  The
    message names the key, the context and the required length, not the
    password nor its actual length.

    :raises SecretsError: the password is too short.
    :raises ValueError: ``min_length`` is less than 1.
    """
    if min_length < 1:
        raise ValueError(f"min_length must be at least 1, not {min_length}")
    if len(secret.reveal()) < min_length:
        key = secret_key(role, context)
        raise SecretsError(
            f"password {key!r} of role {role!r} in context {context.lower()!r} "
            f"is too short: at least {min_length} characters are required "
            f"(generate one with rolekit.secrets.generate_password())"
        )


_fingerprint_cache: OrderedDict[tuple[bytes, bytes, str], str] = OrderedDict()
_fingerprint_lock = threading.Lock()


#: the dotenv key of the file's fingerprint key (no role key has this shape)
FINGERPRINT_KEY: Final = "rolekit.fingerprint_key"


def fingerprint(secret: Secret, *, salt: bytes, label: str, key: bytes | None = None) -> str:
    """Return a salted fingerprint of ``secret`` for changelog checksums.

    With *key* (the random key rolekit keeps in the secrets file itself, see
    :meth:`SecretsFile.fingerprint_key`) it is HMAC-SHA256 keyed with it: fast,
    and useless to whoever reads the changelog without the secrets file, since
    without the key no guess can be tested.  Without a key it falls back to
    the slow scrypt fingerprint described below.

    A changed password must change the checksum of the changeset that sets
    it, but the checksum is stored in the database and must not let anyone
    who reads it test password guesses cheaply.  So it is scrypt
    (n=2**14, r=8, p=1) of the password, salted with ``salt`` (a per-project
    or per-database random value) followed by ``label`` (the key, e.g.
    ``my_app_tom.password.dev``, so equal passwords of two roles differ).

    Results are kept in an in-process LRU cache keyed on the SHA-256 of the
    password, the salt and the label, so the cost is paid once per process.

    :raises ValueError: ``salt`` is empty (an unsalted fingerprint can be
        attacked with precomputed tables).
    """
    if not salt:
        raise ValueError("fingerprint salt must not be empty")
    raw = secret.reveal().encode("utf-8")
    if key is not None:
        message = b"\0".join((bytes(salt), label.encode("utf-8"), raw))
        return "hmac:" + hmac.new(key, message, hashlib.sha256).hexdigest()
    cache_key = (hashlib.sha256(raw).digest(), bytes(salt), label)
    with _fingerprint_lock:
        cached = _fingerprint_cache.get(cache_key)
        if cached is not None:
            _fingerprint_cache.move_to_end(cache_key)
            return cached
    digest = hashlib.scrypt(
        raw,
        salt=bytes(salt) + label.encode("utf-8"),
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=32,
    ).hex()
    with _fingerprint_lock:
        _fingerprint_cache[cache_key] = digest
        _fingerprint_cache.move_to_end(cache_key)
        while len(_fingerprint_cache) > _FINGERPRINT_CACHE_SIZE:
            _fingerprint_cache.popitem(last=False)
    return digest


# ---------------------------------------------------------------------------
# Parsing and validating dotenv content


@dataclass(frozen=True)
class _Parsed:
    """What a valid secrets file holds."""

    #: key -> non-empty value
    values: dict[str, str]
    #: key -> line number, for keys whose value is empty
    empty: dict[str, int]
    #: whether the file started with a UTF-8 BOM (kept when rewriting)
    bom: bool


def _where(key: str, context: str | None) -> str:
    """Describe a key and its context for an error message."""
    if context is None:
        return f"key {key!r}"
    return f"key {key!r} (context {context!r})"


class _Errors:
    """Builds error messages about one file, for one lookup or a whole load.

    Every message names the file, and -- when the error happens while
    looking up a password -- the key and context being looked up, so that a
    broken line elsewhere in the file is not mistaken for a missing password.
    """

    def __init__(self, path: Path, lookup: tuple[str, str] | None) -> None:
        self.path = path
        self.lookup = lookup

    def __call__(self, problem: str, *, line: int | None = None) -> SecretsError:
        at = f"{self.path}:{line}" if line is not None else str(self.path)
        message = f"secrets file {at}: {problem}"
        if self.lookup is not None:
            key, context = self.lookup
            message += f" (while looking up key {key!r} for context {context!r})"
        return SecretsError(message)


def _line_of(data: bytes, offset: int) -> int:
    """Return the 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def _check_bytes(data: bytes, err: _Errors) -> tuple[str, bool]:
    """Refuse binary junk and over-long lines; return the text and BOM flag.

    Done on bytes before python-dotenv sees anything, so that its parser
    never has to cope with a 1 MiB line or a NUL byte, and so that errors
    can give a line number.
    """
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8) :]
    start = 0
    line = 1
    while start <= len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        if end - start > MAX_LINE_BYTES:
            raise err(
                f"line longer than {MAX_LINE_BYTES // 1024} KiB; this is not a "
                "secrets file (or it is corrupt)",
                line=line,
            )
        start = end + 1
        line += 1
    junk = _BINARY_RE.search(data)
    if junk is not None:
        what = "a NUL byte" if junk.group() == b"\0" else "a control character"
        raise err(
            f"{what}: this looks like binary data, not a dotenv file",
            line=_line_of(data, junk.start()),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # ``from None``: the UnicodeDecodeError carries the raw bytes.
        raise err(
            "invalid UTF-8: this looks like binary data, not a dotenv file "
            "(an age file must have a name ending in '.age')",
            line=_line_of(data, exc.start),
        ) from None
    return text, bom


def _first_line(original: str, line: int) -> int:
    """Return the line a binding's key is on.

    python-dotenv numbers a binding from where its reader stopped, which is
    before any blank lines that precede it.
    """
    lead = _LEADING_SPACE_RE.match(original)
    assert lead is not None  # \s* always matches
    return line + len(_NEWLINE_RE.findall(lead.group()))


def _parse(text: str, bom: bool, err: _Errors) -> _Parsed:
    """Parse dotenv ``text``; refuse malformed lines and duplicate keys."""
    values: dict[str, str] = {}
    empty: dict[str, int] = {}
    seen: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = _first_line(binding.original.string, binding.original.line)
        if binding.error:
            # Never quote the line: it may be a password.
            raise err("malformed line that python-dotenv cannot parse", line=line)
        key = binding.key
        if key is None:  # blank line or comment
            continue
        if binding.value is None:
            # Not naming the "key": a password pasted alone on a line would
            # be parsed as a key without value.
            raise err("malformed line: no '=' after the key", line=line)
        if key in seen:
            raise err(
                f"duplicate {_where(key, _context_of(key))} on lines "
                f"{seen[key]} and {line}: it is ambiguous which password is "
                "meant; keep one",
                line=line,
            )
        seen[key] = line
        if binding.value == "":
            empty[key] = line
        else:
            values[key] = binding.value
    return _Parsed(values=values, empty=empty, bom=bom)


def _format_value(value: str) -> str:
    """Quote ``value`` so that python-dotenv parses it back unchanged.

    Plain passwords (as :func:`generate_password` makes) are written bare;
    anything else in single quotes, where python-dotenv only decodes ``\\\\``
    and ``\\'`` and does no ``${VAR}`` expansion.
    """
    if _PLAIN_VALUE_RE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _edit(text: str, key: str, value: str) -> str:
    """Return ``text`` with ``key`` set to ``value``, all else unchanged.

    The key's line is replaced (with its line ending; an inline comment on
    that line is dropped) or, if absent, appended with the file's line
    ending.  Comments, blank lines and other keys are kept byte for byte.
    """
    new_line = f"{key}={_format_value(value)}"
    bindings = list(parse_stream(io.StringIO(text)))
    if "".join(b.original.string for b in bindings) != text:
        # python-dotenv consumes all input; if that ever changes, refuse to
        # rewrite rather than lose lines.
        raise SecretsError(
            "cannot rewrite the secrets file: python-dotenv did not account for all of its content"
        )
    parts: list[str] = []
    found = False
    for binding in bindings:
        original = binding.original.string
        if binding.key == key and not binding.error:
            lead = _LEADING_SPACE_RE.match(original)
            assert lead is not None
            blank = lead.group()
            cut = max(blank.rfind("\n"), blank.rfind("\r")) + 1
            eol = _EOL_RE.search(original)
            parts.append(original[:cut] + new_line + (eol.group() if eol else ""))
            found = True
        else:
            parts.append(original)
    result = "".join(parts)
    if not found:
        newline = "\r\n" if "\r\n" in text else "\n"
        if result and not result.endswith(("\n", "\r")):
            result += newline
        result += new_line + newline
    return result


# ---------------------------------------------------------------------------
# age identities and recipients


class _AgeIdentity(Protocol):
    """The part of ``pyrage.x25519.Identity`` rolekit uses."""

    def to_public(self) -> object: ...


@dataclass(frozen=True)
class _Identities:
    """Identities for decrypting, and where they came from (for messages)."""

    keys: list[_AgeIdentity]
    source: str


def _pyrage(err: _Errors) -> ModuleType:
    """Import pyrage, which only ``.age`` files need (extra ``rolekit[age]``).

    Imported on first use so that plaintext files work without it.
    """
    try:
        return importlib.import_module("pyrage")
    except ImportError:
        raise err("age files need the pyrage package: pip install 'rolekit[age]'") from None


def _parse_identity(pyrage: ModuleType, text: str) -> _AgeIdentity:
    """Parse one ``AGE-SECRET-KEY-1...``; pyrage's error is not re-raised.

    :raises ValueError: without any part of ``text`` in its message.
    """
    try:
        identity: _AgeIdentity = pyrage.x25519.Identity.from_str(text)
    except pyrage.IdentityError:
        raise ValueError("not an age X25519 identity") from None
    return identity


def _warn(message: str) -> None:
    """Warn both ways: ``warnings`` for tests and tools, logging for ops.

    The warning is attributed to the first caller outside this module, so
    that filters and the printed location point at the user's code.
    """
    level = 1
    frame = sys._getframe(0)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
        level += 1
    warnings.warn(message, SecretsFileWarning, stacklevel=level)
    logger.warning("%s", message)


def _load_identities(err: _Errors) -> _Identities | None:
    """Read the identities named by the environment, or ``None`` if none.

    Both variables may be set; their identities are then all tried.
    """
    pyrage = _pyrage(err)
    keys: list[_AgeIdentity] = []
    sources: list[str] = []
    file_name = os.environ.get(AGE_IDENTITY_FILE_ENV, "").strip()
    if file_name:
        identity_path = Path(file_name).expanduser()
        data = _read_regular_file(
            identity_path,
            _MAX_IDENTITY_FILE_BYTES,
            _Errors(identity_path, err.lookup),
            what=f"age identity file (from {AGE_IDENTITY_FILE_ENV})",
            follow_symlinks=True,
        )[0]
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise err(
                f"age identity file {identity_path} (from "
                f"{AGE_IDENTITY_FILE_ENV}) is not UTF-8 text"
            ) from None
        found = 0
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                keys.append(_parse_identity(pyrage, line))
            except ValueError:
                raise err(
                    f"line {number} of age identity file {identity_path} (from "
                    f"{AGE_IDENTITY_FILE_ENV}) is not an age X25519 identity "
                    "(AGE-SECRET-KEY-1...)"
                ) from None
            found += 1
        if not found:
            raise err(
                f"age identity file {identity_path} (from {AGE_IDENTITY_FILE_ENV}) "
                "holds no identity (AGE-SECRET-KEY-1...)"
            )
        mode = identity_path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            _warn(
                f"age identity file {identity_path} is readable by group or "
                f"others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 "
                f"{identity_path}"
            )
        sources.append(f"identity file {identity_path} ({AGE_IDENTITY_FILE_ENV})")
    inline = os.environ.get(AGE_IDENTITY_ENV, "").strip()
    if inline:
        try:
            keys.append(_parse_identity(pyrage, inline))
        except ValueError:
            raise err(
                f"{AGE_IDENTITY_ENV} is not an age X25519 identity (AGE-SECRET-KEY-1...)"
            ) from None
        sources.append(AGE_IDENTITY_ENV)
    if not keys:
        return None
    return _Identities(keys=keys, source=" and ".join(sources))


def _recipients(identities: _Identities | None, err: _Errors) -> list[object]:
    """Return the recipients to encrypt to: our identities' and the extras."""
    pyrage = _pyrage(err)
    found: dict[str, object] = {}
    if identities is not None:
        for identity in identities.keys:
            public = identity.to_public()
            found.setdefault(str(public), public)
    extra = os.environ.get(AGE_RECIPIENTS_ENV, "")
    for number, item in enumerate(extra.split(","), start=1):
        name = item.strip()
        if not name:
            continue
        try:
            recipient = pyrage.x25519.Recipient.from_str(name)
        except pyrage.RecipientError:
            raise err(
                f"entry {number} of {AGE_RECIPIENTS_ENV}, {name!r}, is not an "
                "age X25519 recipient (age1...)"
            ) from None
        found.setdefault(str(recipient), recipient)
    return list(found.values())


def _age_binary(data: bytes) -> bytes | None:
    """Return the binary form of an age file (un-armoring if needed)."""
    if data.startswith(_AGE_MAGIC):
        return data
    if data.lstrip().startswith(_AGE_ARMOR_BEGIN):
        body = data.strip()[len(_AGE_ARMOR_BEGIN) :]
        end = body.find(_AGE_ARMOR_END)
        if end >= 0:
            with suppress(ValueError):
                return base64.b64decode(b"".join(body[:end].split()))
    return None


def _x25519_stanzas(data: bytes) -> int:
    """Count the X25519 recipients an age file was encrypted to.

    Only header lines are read (no crypto): ``-> X25519 ...`` stanzas.
    Grease stanzas, which age adds at random, have other tags and are not
    counted.  Returns 0 when the header cannot be read.
    """
    binary = _age_binary(data)
    if binary is None:
        return 0
    header_end = binary.find(b"\n---")
    header = binary[: max(header_end, 0)]
    return sum(1 for line in header.split(b"\n") if line.startswith(b"-> X25519 "))


# ---------------------------------------------------------------------------
# Files


def _read_regular_file(
    path: Path, limit: int, err: _Errors, *, what: str, follow_symlinks: bool = False
) -> tuple[bytes, os.stat_result]:
    """Read at most ``limit`` bytes of a regular file, refusing anything else.

    The size is checked with ``fstat`` before reading, so a huge file (or a
    sparse one of a terabyte) costs nothing, and at most ``limit + 1`` bytes
    are ever read in case it grows meanwhile.  The file is opened with
    ``O_NOFOLLOW`` (unless ``follow_symlinks``), so a symlink swapped in
    after our check is refused too, and ``O_NONBLOCK`` so a FIFO cannot hang
    us.
    """
    if not follow_symlinks and path.is_symlink():
        raise err(
            f"{what} is a symlink; refusing to follow it (it could point at "
            "any file): use the real path instead"
        )
    too_big = f"{what} is larger than {limit // 1024} KiB; refusing to read it"
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise err(f"{what} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise err(f"{what} is a symlink; refusing to follow it") from None
        raise err(f"cannot open {what}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise err(f"{what} is not a regular file")
        if info.st_size > limit:
            raise err(too_big)
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 16))):
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise err(too_big)
    return data, info


def _git_tracks(path: Path) -> bool:
    """Tell whether git tracks (or has staged) ``path``.

    Runs in the file's directory so the check is about the repository the
    file is in, whatever the current directory.  No git, no repository, an
    unsafe repository, a timeout: all mean "cannot tell", which is not an
    error -- the check is a safety net, not a requirement to use git.
    """
    if "GIT_DIR" not in os.environ and not any(
        (folder / ".git").exists()
        for folder in (path.parent.resolve(), *path.parent.resolve().parents)
    ):
        return False  # not in a work tree: spare every run a git process
    try:
        result = subprocess.run(
            [
                "git",
                "--literal-pathspecs",
                "ls-files",
                "--error-unmatch",
                "--",
                path.name,
            ],
            cwd=path.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


@contextmanager
def _flocked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600 if needed).

    A separate lock file, never replaced or deleted, is what makes the lock
    work: the secrets file itself is replaced by ``os.replace`` on every
    write, so a lock on it would be a lock on an old inode.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise SecretsError(f"cannot open lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or new file whole.

    The temporary file is created 0600 in the same directory (``os.replace``
    is only atomic within a file system) and fsynced before the rename; the
    directory is fsynced after, so the rename survives a crash.  Its name
    (``.passwords.env.XXXX.tmp.env``) keeps the file's suffix, so that an
    ignore rule like ``*.env`` also covers a temporary file a crash left.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as exc:
        raise SecretsError(f"cannot write secrets file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise SecretsError(f"cannot write secrets file {path}: {exc.strerror}") from None
        raise
    with suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _check_value(value: str, key: str, context: str) -> None:
    """Refuse a value that :meth:`SecretsFile.load` would refuse to read back."""
    where = _where(key, context)
    if not isinstance(value, str):
        raise TypeError(f"the password for {where} must be a str")
    if not value:
        raise SecretsError(f"refusing to store an empty password for {where}")
    if "\n" in value or "\r" in value or _BINARY_RE.search(value.encode("utf-8")):
        raise SecretsError(
            f"refusing to store the password for {where}: it holds a line break "
            "or a control character"
        )
    if len(new_line := f"{key}={_format_value(value)}".encode()) > MAX_LINE_BYTES:
        raise SecretsError(
            f"refusing to store the password for {where}: its line would be "
            f"{len(new_line)} bytes, over the {MAX_LINE_BYTES // 1024} KiB limit"
        )


class SecretsFile:
    """One secrets file: ``passwords.env`` (plaintext) or ``*.age`` (encrypted).

    Reading is cached on the file's (mtime_ns, size, inode), so looking up
    many passwords costs one read and one parse, while an edit by another
    process (which replaces the file) is picked up at the next lookup.

    :param path: the file; a relative path is taken relative to
        ``repo_root`` when given (the project directory, e.g. where
        ``alembic.ini`` is), else to the current directory.
    :param repo_root: see ``path``.
    """

    def __init__(self, path: Path, *, repo_root: Path | None = None) -> None:
        path = Path(path).expanduser()
        if repo_root is not None and not path.is_absolute():
            path = Path(repo_root) / path
        self.path = path
        self._lock = threading.Lock()
        self._cache_key: tuple[int, int, int] | None = None
        self._cache: _Parsed | None = None

    def __repr__(self) -> str:
        return f"SecretsFile({str(self.path)!r})"

    @property
    def encrypted(self) -> bool:
        """Whether the file is age-encrypted (its name ends in ``.age``)."""
        return self.path.name.endswith(".age")

    @property
    def lock_path(self) -> Path:
        """The sibling lock file :meth:`set` serialises writers on."""
        return self.path.with_name(self.path.name + ".lock")

    # -- reading ----------------------------------------------------------

    def load(self) -> dict[str, Secret]:
        """Return every non-empty password in the file, by key.

        :raises SecretsError: the file is missing, a symlink, too large,
            binary, malformed, has a duplicate key, is tracked by git
            (plaintext only), or cannot be decrypted.
        """
        parsed = self._load(None)
        return {key: Secret(value) for key, value in parsed.values.items()}

    def get(self, role: str, context: str) -> Secret:
        """Return ``role``'s password in ``context``.

        :raises SecretsError: the key is missing or empty, or the file
            cannot be used (see :meth:`load`); the message names the file,
            the key and the context.
        """
        key = secret_key(role, context)
        ctx = context.lower()
        parsed = self._load((key, ctx))
        # The messages below name key and context themselves.
        err = _Errors(self.path, None)
        value = parsed.values.get(key)
        if value is not None:
            return Secret(value)
        if key in parsed.empty:
            raise err(
                f"{_where(key, ctx)} has an empty value; put the password of "
                f"role {role!r} for context {ctx!r} there",
                line=parsed.empty[key],
            )
        others = sorted(
            {
                m["context"]
                for k in (*parsed.values, *parsed.empty)
                if (m := _KEY_RE.fullmatch(k)) and m["role"] == role
            }
        )
        hint = f"; it has role {role!r} for context(s) {', '.join(others)}" if others else ""
        raise err(
            f"no password for role {role!r} in context {ctx!r}: add a line '{key}=<password>'{hint}"
        )

    def has(self, role: str, context: str) -> bool:
        """Tell whether ``role`` has a non-empty password in ``context``.

        A missing file means "no"; a broken one still raises, since it
        cannot tell either way.
        """
        key = secret_key(role, context)
        if not self.path.exists() and not self.path.is_symlink():
            return False
        return key in self._load((key, context.lower())).values

    def _load(self, lookup: tuple[str, str] | None) -> _Parsed:
        """Return the parsed file, from cache while it is unchanged."""
        err = _Errors(self.path, lookup)
        with self._lock:
            if self.path.is_symlink():
                # Checked before the cache: a file swapped for a symlink
                # must be refused even if its stat looks the same.
                self._cache = self._cache_key = None
                raise err("the secrets file is a symlink; refusing to follow it")
            try:
                info = self.path.stat()
            except FileNotFoundError:
                self._cache = self._cache_key = None
                raise err("the secrets file does not exist") from None
            except OSError as exc:
                raise err(f"cannot stat the secrets file: {exc.strerror}") from None
            if self._cache is not None and self._cache_key == _stat_key(info):
                return self._cache
            parsed, info = self._read(err)
            self._cache, self._cache_key = parsed, _stat_key(info)
            return parsed

    def _read(self, err: _Errors) -> tuple[_Parsed, os.stat_result]:
        """Read, decrypt if needed, check and parse the file (no cache)."""
        if self.encrypted:
            data, info = _read_regular_file(
                self.path, _MAX_AGE_FILE_BYTES, err, what="the secrets file"
            )
            plaintext = self._decrypt(data, err)
        else:
            plaintext, info = _read_regular_file(
                self.path, MAX_FILE_BYTES, err, what="the secrets file"
            )
            self._check_hygiene(info, err)
        text, bom = _check_bytes(plaintext, err)
        return _parse(text, bom, err), info

    def _decrypt(self, data: bytes, err: _Errors) -> bytes:
        """Decrypt an age file with the identities from the environment."""
        identities = _load_identities(err)
        if identities is None:
            raise err(
                f"the file is age-encrypted but no identity is set: set "
                f"{AGE_IDENTITY_FILE_ENV} to an age identity file or "
                f"{AGE_IDENTITY_ENV} to the key itself"
            )
        pyrage = _pyrage(err)
        try:
            plaintext: bytes = pyrage.decrypt(data, identities.keys)
        except pyrage.DecryptError as exc:
            # pyrage's messages are fixed strings about the file, never a
            # key; still, only known ones are passed on.
            if "no matching keys" in str(exc).lower():
                problem = (
                    f"cannot decrypt it with {identities.source}: it was not "
                    "encrypted to that key (wrong identity?)"
                )
            else:
                problem = (
                    f"cannot decrypt it with {identities.source}: it is not a "
                    "valid age file or it is damaged"
                )
            raise err(problem) from None
        if len(plaintext) > MAX_FILE_BYTES:
            raise err(f"decrypted content is larger than {MAX_FILE_BYTES // 1024} KiB; refusing it")
        return plaintext

    def _check_hygiene(self, info: os.stat_result, err: _Errors) -> None:
        """Refuse a git-tracked plaintext file; warn if others may read it."""
        if _git_tracks(self.path):
            raise err(
                "this plaintext password file is tracked by git, so its "
                "passwords are in the repository: run "
                f"'git rm --cached {self.path.name}', add it to .gitignore, "
                "commit, and rotate the passwords it held (they stay in git "
                "history); or encrypt it with age as a '.age' file"
            )
        if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            _warn(
                f"secrets file {self.path} is readable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 "
                f"{self.path}"
            )

    # -- writing ----------------------------------------------------------

    def set(self, role: str, context: str, value: str) -> None:
        """Store ``role``'s password in ``context``, keeping everything else.

        Concurrent writers (several ``rolekit`` processes) are serialised by
        an ``flock`` on :attr:`lock_path`; readers need no lock since the
        file is replaced atomically.  The result is mode 0600.  An existing
        file must be valid (no duplicate or malformed line) -- rolekit does
        not guess how to repair one.  An age file is decrypted, edited and
        re-encrypted to the public keys of the identities plus
        ``ROLEKIT_AGE_RECIPIENTS``; if that is fewer X25519 recipients than
        the file had, the write is refused so nobody is locked out.

        :raises SecretsError: the value is empty or has a line break, or the
            file cannot be read or written.
        """
        key = secret_key(role, context)
        ctx = context.lower()
        _check_value(value, key, ctx)
        self._store(key, ctx, value)
        logger.info("stored the password %s in %s", _where(key, ctx), self.path)

    def fingerprint_key(self) -> bytes | None:
        """The file's random fingerprint key, if it has one (see :func:`fingerprint`)."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        value = self._load(None).values.get(FINGERPRINT_KEY)
        try:
            return bytes.fromhex(value) if value else None
        except ValueError:
            raise _Errors(self.path, None)(
                f"{FINGERPRINT_KEY} is not hex; delete the line to have a new one made"
            ) from None

    def ensure_fingerprint_key(self) -> None:
        """Give the file a random fingerprint key if it has none.

        rolekit's own writers (``gen-password --write``, ``rotate begin``) call
        it.  Every deploy host reads the same file, so they agree on checksums.
        """
        if self.fingerprint_key() is None:
            self._store(FINGERPRINT_KEY, "", _stdlib_secrets.token_hex(32))

    def _store(self, key: str, ctx: str, value: str) -> None:
        err = _Errors(self.path, (key, ctx))
        with _flocked(self.lock_path), self._lock:
            self._cache = self._cache_key = None
            exists = self.path.exists() or self.path.is_symlink()
            old_stanzas = 0
            if exists:
                if self.encrypted:
                    data, _ = _read_regular_file(
                        self.path, _MAX_AGE_FILE_BYTES, err, what="the secrets file"
                    )
                    old_stanzas = _x25519_stanzas(data)
                    plaintext = self._decrypt(data, err)
                    armored = not data.startswith(_AGE_MAGIC)
                else:
                    plaintext, info = _read_regular_file(
                        self.path, MAX_FILE_BYTES, err, what="the secrets file"
                    )
                    self._check_hygiene(info, err)
                    armored = False
                text, bom = _check_bytes(plaintext, err)
                _parse(text, bom, err)
            else:
                text, bom, armored = "", False, False
            new_text = _edit(text, key, value)
            new_data = (codecs.BOM_UTF8 if bom else b"") + new_text.encode("utf-8")
            if len(new_data) > MAX_FILE_BYTES:
                raise err(
                    f"the file would grow over {MAX_FILE_BYTES // 1024} KiB; refusing to write it"
                )
            if self.encrypted:
                new_data = self._encrypt(new_data, old_stanzas, armored, err)
            _atomic_write(self.path, new_data)

    def _encrypt(self, plaintext: bytes, old_stanzas: int, armored: bool, err: _Errors) -> bytes:
        """Encrypt for :meth:`set`, refusing to drop recipients."""
        recipients = _recipients(_load_identities(err), err)
        if not recipients:
            raise err(
                "cannot encrypt: no recipient; set "
                f"{AGE_IDENTITY_FILE_ENV} or {AGE_IDENTITY_ENV} (its public key "
                f"is used) and/or {AGE_RECIPIENTS_ENV}"
            )
        if len(recipients) < old_stanzas:
            raise err(
                f"the file is encrypted to {old_stanzas} recipients but would be "
                f"re-encrypted to {len(recipients)} (your identities plus "
                f"{AGE_RECIPIENTS_ENV}), locking the others out: list every "
                f"recipient's age1... key in {AGE_RECIPIENTS_ENV}"
            )
        pyrage = _pyrage(err)
        try:
            ciphertext: bytes = pyrage.encrypt(plaintext, recipients, armored=armored)
        except pyrage.EncryptError:
            raise err("age encryption failed") from None
        return ciphertext


def _stat_key(info: os.stat_result) -> tuple[int, int, int]:
    """Cache key: (mtime_ns, size) as designed, plus the inode.

    The inode catches a same-size file put in place by ``os.replace``
    within one mtime tick (coarse on some file systems).
    """
    return (info.st_mtime_ns, info.st_size, info.st_ino)
