"""age encryption (through pyrage): identities, recipients, decrypting and re-encrypting.

pyrage is the optional extra ``rolekit[age]``, imported on first use so that
plaintext files work without it.  rolekit re-encrypts a file for the
identities' public keys plus ``ROLEKIT_AGE_RECIPIENTS`` and refuses to drop a
recipient it had.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, Protocol

from rolekit._fileio import read_regular_file
from rolekit.model import variables
from rolekit.secrets._dotenv import MAX_FILE_BYTES, Errors
from rolekit.secrets._warnings import warn

#: path of an age identity file (comments and several keys allowed)
AGE_IDENTITY_FILE_ENV: Final = variables.AGE_IDENTITY_FILE.name
#: an age identity itself, ``AGE-SECRET-KEY-1...``
AGE_IDENTITY_ENV: Final = variables.AGE_IDENTITY.name
#: extra recipients (``age1...``, comma-separated) to encrypt to when writing
AGE_RECIPIENTS_ENV: Final = variables.AGE_RECIPIENTS.name
#: identity files hold a handful of keys and comments
_MAX_IDENTITY_FILE_BYTES: Final = 64 * 1024

AGE_MAGIC: Final = b"age-encryption.org/v1\n"
_AGE_ARMOR_BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
_AGE_ARMOR_END: Final = b"-----END AGE ENCRYPTED FILE-----"


class _AgeIdentity(Protocol):
    """The part of ``pyrage.x25519.Identity`` rolekit uses."""

    def to_public(self) -> object: ...


@dataclass(frozen=True)
class _Identities:
    """Identities for decrypting, and where they came from (for messages)."""

    keys: list[_AgeIdentity]
    source: str


def pyrage_module(err: Errors) -> ModuleType:
    """Import pyrage, which only ``.age`` files need (extra ``rolekit[age]``).

    Imported on first use so that plaintext files work without it.
    """
    try:
        return importlib.import_module("pyrage")
    except ImportError:
        raise err("age files need the pyrage package: pip install 'rolekit[age]'") from None


def _parse_identity(pyrage: ModuleType, text: str, err: Errors, where: str) -> _AgeIdentity:
    """Parse one ``AGE-SECRET-KEY-1...``; pyrage's error is not re-raised.

    :raises SecretsError: "*where* is not an age X25519 identity", without any
        part of *text*.
    """
    try:
        identity: _AgeIdentity = pyrage.x25519.Identity.from_str(text)
    except pyrage.IdentityError:
        raise err(f"{where} is not an age X25519 identity (AGE-SECRET-KEY-1...)") from None
    return identity


def load_identities(err: Errors) -> _Identities | None:
    """Read the identities named by the environment, or ``None`` if none.

    Both variables may be set; their identities are then all tried.
    """
    pyrage = pyrage_module(err)
    keys: list[_AgeIdentity] = []
    sources: list[str] = []
    file_name = os.environ.get(AGE_IDENTITY_FILE_ENV, "").strip()
    if file_name:
        identity_path = Path(file_name).expanduser()
        keys += _identity_file(pyrage, identity_path, err)
        sources.append(f"identity file {identity_path} ({AGE_IDENTITY_FILE_ENV})")
    inline = os.environ.get(AGE_IDENTITY_ENV, "").strip()
    if inline:
        keys.append(_parse_identity(pyrage, inline, err, AGE_IDENTITY_ENV))
        sources.append(AGE_IDENTITY_ENV)
    if not keys:
        return None
    return _Identities(keys=keys, source=" and ".join(sources))


def _identity_file(pyrage: ModuleType, path: Path, err: Errors) -> list[_AgeIdentity]:
    """The identities of an age identity file (comments and several keys allowed)."""
    what = f"age identity file {path} (from {AGE_IDENTITY_FILE_ENV})"
    data = read_regular_file(
        path,
        _MAX_IDENTITY_FILE_BYTES,
        what=f"age identity file (from {AGE_IDENTITY_FILE_ENV})",
        fail=Errors(path, err.lookup),
        follow_symlinks=True,
    )[0]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise err(f"{what} is not UTF-8 text") from None
    keys = [
        _parse_identity(pyrage, line.strip(), err, f"line {number} of {what}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not keys:
        raise err(f"{what} holds no identity (AGE-SECRET-KEY-1...)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warn(
            f"age identity file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return keys


def recipients(identities: _Identities | None, err: Errors) -> list[object]:
    """Return the recipients to encrypt to: our identities' and the extras."""
    pyrage = pyrage_module(err)
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
    if data.startswith(AGE_MAGIC):
        return data
    if data.lstrip().startswith(_AGE_ARMOR_BEGIN):
        body = data.strip()[len(_AGE_ARMOR_BEGIN) :]
        end = body.find(_AGE_ARMOR_END)
        if end >= 0:
            with contextlib.suppress(ValueError):
                return base64.b64decode(b"".join(body[:end].split()))
    return None


def x25519_stanzas(data: bytes) -> int:
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


def decrypt(data: bytes, err: Errors) -> bytes:
    """Decrypt an age file with the identities from the environment."""
    identities = load_identities(err)
    if identities is None:
        raise err(
            f"the file is age-encrypted but no identity is set: set "
            f"{AGE_IDENTITY_FILE_ENV} to an age identity file or "
            f"{AGE_IDENTITY_ENV} to the key itself"
        )
    pyrage = pyrage_module(err)
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


def encrypt(plaintext: bytes, old_stanzas: int, armored: bool, err: Errors) -> bytes:
    """Encrypt for :meth:`set`, refusing to drop recipients."""
    to = recipients(load_identities(err), err)
    if not to:
        raise err(
            "cannot encrypt: no recipient; set "
            f"{AGE_IDENTITY_FILE_ENV} or {AGE_IDENTITY_ENV} (its public key "
            f"is used) and/or {AGE_RECIPIENTS_ENV}"
        )
    if len(to) < old_stanzas:
        raise err(
            f"the file is encrypted to {old_stanzas} recipients but would be "
            f"re-encrypted to {len(to)} (your identities plus "
            f"{AGE_RECIPIENTS_ENV}), locking the others out: list every "
            f"recipient's age1... key in {AGE_RECIPIENTS_ENV}"
        )
    pyrage = pyrage_module(err)
    try:
        ciphertext: bytes = pyrage.encrypt(plaintext, to, armored=armored)
    except pyrage.EncryptError:
        raise err("age encryption failed") from None
    return ciphertext
