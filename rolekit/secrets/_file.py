"""One secrets file: ``passwords.env`` (plaintext dotenv), ``*.age`` or ``*.sops.*`` (encrypted).

Reading is cached on the file's stamp, so many lookups cost one read and one
parse while an edit by another process is picked up at the next lookup.
Writing goes through :func:`rolekit._fileio.atomic_write` under a lock file.
A plaintext file tracked by git is refused: its passwords are in history.
"""

from __future__ import annotations

import codecs
import importlib
import logging
import os
import stat
import subprocess
import threading
from pathlib import Path
from secrets import token_hex
from types import ModuleType
from typing import Final

from rolekit._fileio import Stamp, atomic_write, flocked, read_regular_file, stamp_of
from rolekit.secrets import _sops
from rolekit.secrets._dotenv import (
    MAX_FILE_BYTES,
    Errors,
    Parsed,
    check_bytes,
    check_value,
    edit,
    parse,
    where,
)
from rolekit.secrets._fingerprint import FINGERPRINT_KEY
from rolekit.secrets._keys import KEY_RE, context_of, secret_key
from rolekit.secrets._secret import Secret
from rolekit.secrets._warnings import warn

logger = logging.getLogger(__name__)

#: an age file may be larger than its plaintext (header, tags, armor)
MAX_AGE_FILE_BYTES: Final = 2 * MAX_FILE_BYTES


def _age() -> ModuleType:
    """The age module, imported only for ``.age`` files (it costs every run otherwise)."""
    return importlib.import_module("rolekit.secrets._age")


def git_tracks(path: Path) -> bool:
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


class SecretsFile:
    """One secrets file: ``passwords.env`` (plaintext), ``*.age`` or ``*.sops.*`` (encrypted).

    The name decides the kind: a name ending in ``.age`` is an age file, a
    name holding ``.sops.`` (``passwords.prod.sops.env``) a SOPS dotenv file,
    anything else plaintext.  The content must agree: a ``.sops.`` file
    without SOPS metadata, or a plaintext-named file with it, is refused
    rather than read as passwords.

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
        self._cache_key: Stamp | None = None
        self._cache: Parsed | None = None

    def __repr__(self) -> str:
        return f"SecretsFile({str(self.path)!r})"

    @property
    def kind(self) -> str:
        """``"age"``, ``"sops"`` or ``"dotenv"`` (plaintext), by the file's name."""
        if self.path.name.endswith(".age"):
            return "age"
        if _sops.is_sops_name(self.path):
            return "sops"
        return "dotenv"

    @property
    def encrypted(self) -> bool:
        """Whether the file is encrypted: age (``.age``) or SOPS (``.sops.`` in its name)."""
        return self.kind != "dotenv"

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
        err = Errors(self.path, None)
        value = parsed.values.get(key)
        if value is not None:
            return Secret(value)
        if key in parsed.empty:
            raise err(
                f"{where(key, ctx)} has an empty value; put the password of "
                f"role {role!r} for context {ctx!r} there",
                line=parsed.empty[key],
            )
        others = sorted(
            {
                m["context"]
                for k in (*parsed.values, *parsed.empty)
                if (m := KEY_RE.fullmatch(k)) and m["role"] == role
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

    def _load(self, lookup: tuple[str, str] | None) -> Parsed:
        """Return the parsed file, from cache while it is unchanged."""
        err = Errors(self.path, lookup)
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
            if self._cache is not None and self._cache_key == stamp_of(info):
                return self._cache
            parsed, info = self._read(err)
            self._cache, self._cache_key = parsed, stamp_of(info)
            return parsed

    def _read(self, err: Errors) -> tuple[Parsed, os.stat_result]:
        """Read, decrypt if needed, check and parse the file (no cache)."""
        _data, plaintext, info = self._read_plaintext(err)
        text, bom = check_bytes(plaintext, err)
        return parse(text, bom, err), info

    def _read_plaintext(self, err: Errors) -> tuple[bytes, bytes, os.stat_result]:
        """The file's bytes, their plaintext, and its ``stat``; refusing a wrong kind."""
        kind = self.kind
        if kind == "sops":
            _sops.check_kind(self.path, err)
            data, info = read_regular_file(
                self.path, _sops.MAX_SOPS_FILE_BYTES, what="the secrets file", fail=err
            )
            return data, _sops.decrypt(data, self.path, err), info
        if kind == "age":
            data, info = read_regular_file(
                self.path, MAX_AGE_FILE_BYTES, what="the secrets file", fail=err
            )
            return data, _age().decrypt(data, err), info
        plaintext, info = read_regular_file(
            self.path, MAX_FILE_BYTES, what="the secrets file", fail=err
        )
        if _sops.has_metadata(plaintext):
            raise err(
                "this file holds SOPS metadata (sops_version=, sops_mac=), so its values "
                "are ciphertexts, not passwords: name it with '.sops.' (e.g. "
                f"{self.path.stem}.sops{self.path.suffix or '.env'}) so rolekit decrypts it "
                "with sops"
            )
        self._check_hygiene(info, err)
        return plaintext, plaintext, info

    def _check_hygiene(self, info: os.stat_result, err: Errors) -> None:
        """Refuse a git-tracked plaintext file; warn if others may read it."""
        if git_tracks(self.path):
            raise err(
                "this plaintext password file is tracked by git, so its "
                "passwords are in the repository: run "
                f"'git rm --cached {self.path.name}', add it to .gitignore, "
                "commit, and rotate the passwords it held (they stay in git "
                "history); or encrypt it with age as a '.age' file"
            )
        if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warn(
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
        the file had, the write is refused so nobody is locked out.  A SOPS
        file is changed by ``sops set`` (the value on a pipe), which keeps
        the other values' ciphertexts and the recipients; a result with fewer
        recipients is refused too.

        :raises SecretsError: the value is empty or has a line break, or the
            file cannot be read or written.
        """
        key = secret_key(role, context)
        ctx = context.lower()
        check_value(value, key, ctx)
        self._store(key, ctx, value)
        logger.info("stored the password %s in %s", where(key, ctx), self.path)

    def fingerprint_key(self) -> bytes | None:
        """The file's random fingerprint key, if it has one (see :func:`fingerprint`)."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        value = self._load(None).values.get(FINGERPRINT_KEY)
        try:
            return bytes.fromhex(value) if value else None
        except ValueError:
            raise Errors(self.path, None)(
                f"{FINGERPRINT_KEY} is not hex; delete the line to have a new one made"
            ) from None

    def ensure_fingerprint_key(self) -> None:
        """Give the file a random fingerprint key if it has none.

        rolekit's own writers (``gen-password --write``, ``rotate begin``) call
        it.  Every deploy host reads the same file, so they agree on checksums.
        """
        if self.fingerprint_key() is None:
            self._store(FINGERPRINT_KEY, "", token_hex(32))

    def _store(self, key: str, ctx: str, value: str) -> None:
        err = Errors(self.path, (key, ctx))
        with flocked(self.lock_path, fail=err), self._lock:
            self._cache = self._cache_key = None
            exists = self.path.exists() or self.path.is_symlink()
            if self.kind == "sops":
                self._store_sops(key, value, exists, err)
                return
            old_stanzas = 0
            if exists:
                data, plaintext, _ = self._read_plaintext(err)
                if self.kind == "age":
                    age = _age()
                    old_stanzas = age.x25519_stanzas(data)
                    armored = not data.startswith(age.AGE_MAGIC)
                else:
                    armored = False
                text, bom = check_bytes(plaintext, err)
                parse(text, bom, err)
            else:
                text, bom, armored = "", False, False
            new_data = self._edited(text, bom, key, value, err)
            if self.kind == "age":
                new_data = _age().encrypt(new_data, old_stanzas, armored, err)
            atomic_write(self.path, new_data, mode=0o600, fail=err)

    @staticmethod
    def _edited(text: str, bom: bool, key: str, value: str, err: Errors) -> bytes:
        """*text* with *key* set, as bytes; refused if it grows over the size limit."""
        new_text = edit(text, key, value)
        new_data = (codecs.BOM_UTF8 if bom else b"") + new_text.encode("utf-8")
        if len(new_data) > MAX_FILE_BYTES:
            raise err(
                f"the file would grow over {MAX_FILE_BYTES // 1024} KiB; refusing to write it"
            )
        return new_data

    def _store_sops(self, key: str, value: str, exists: bool, err: Errors) -> None:
        """Set one key of a SOPS file with sops itself; a new file by ``.sops.yaml``'s rule.

        The edit is checked on the plaintext first (strict rules, size), then
        made by ``sops set`` on the ciphertext and verified by decrypting the
        result, before the file is replaced.
        """
        _sops.check_kind(self.path, err)
        if not exists:
            plaintext = self._edited("", False, key, value, err)
            atomic_write(
                self.path, _sops.encrypt_new(plaintext, self.path, err), mode=0o600, fail=err
            )
            return
        data, plaintext, _ = self._read_plaintext(err)
        text, bom = check_bytes(plaintext, err)
        parse(text, bom, err)
        edited = self._edited(text, bom, key, value, err)
        new_data = _sops.set_value(data, self.path, key, value, err)
        expected = parse(*check_bytes(edited, err), err)
        got = parse(*check_bytes(_sops.decrypt(new_data, self.path, err), err), err)
        if (got.values, set(got.empty)) != (expected.values, set(expected.empty)):
            raise err(
                "sops's result does not decrypt to the intended content (another value "
                "changed or went missing); nothing changed"
            )
        atomic_write(self.path, new_data, mode=0o600, fail=err)


def contexts_in(secrets: SecretsFile) -> set[str]:
    """The contexts that keys of *secrets* name (``role.password.<context>``)."""
    return {ctx for key in secrets.load() if (ctx := context_of(key)) is not None}
