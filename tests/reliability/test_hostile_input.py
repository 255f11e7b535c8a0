"""Hostile input: role names, contexts and secrets files an attacker, a typo
or a broken tool could produce.

Each input must get a clear error (no traceback), change nothing (catalog,
changelog and the project's files) and leak nothing (no password in the
output or the server log).  CRLF line endings and a BOM are legitimate: they
must work, with the values read exactly.

The module shares one cluster: a baseline (example project upgraded in dev)
is built once, and every test starts from a copy of its files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rolekit.testing import Cluster, Project
from tests.plugins.postgres import example_project
from tests.plugins.reliability import Counts
from tests.reliability.helpers import (
    CLEAN_ERROR,
    TRACEBACK,
    alembic_cmd,
    cli,
    db_state,
    find_leaks,
    login_works,
    rolekit_cmd,
    state_diff,
)

# -- the inputs -------------------------------------------------------------------

ROLE_NAMES = {
    "quote": "my'app",
    "double-quote": 'my"app',
    "semicolon": "x;y",
    "injection": 'x"; DROP ROLE postgres; --',
    "backslash": "back\\slash",
    "non-ascii": "rôle_app",
    "64-bytes": "a" * 64,
    "64-bytes-utf8": "é" * 32,
    "300-bytes": "r" * 300,
    "empty": "",
    "newline": "my_app\nx",
    "nul": "a\x00b",
    "terminal-escape": "x\x1b[2J\x1b]0;pwned\x07",
    "upper-case": "My_App",
    "reserved": "pg_app",
}
CLI_ROLE_NAMES = {k: v for k, v in ROLE_NAMES.items() if k != "nul"}  # argv cannot hold NUL

ACTIVE_CONTEXTS = {
    "unbalanced": "dev and (prod",
    "open-paren": "(dev",
    "close-paren": "dev)",
    "blank-list": " , ",
    "trailing-comma": "dev,",
    "operator": "and",
    "negation": "!prod",
    "quote": "dev'--",
    "semicolon": "dev;DROP ROLE postgres",
    "non-ascii": "dév",
    "terminal-escape": "dev\x1b[2J",
    "huge-name": "d" * 100_000,
    "huge-list": ",".join(f"c{i}" for i in range(15_000)),  # 90 KB of valid names
    "huge-nesting": "(" * 5_000 + "dev" + ")" * 5_000,
}
#: control characters an error must escape, not print (tab, LF and CR aside)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: what rolekit says about a role name it refuses
ROLE_PROBLEM = re.compile(r"not allowed|is empty|bytes|reserved|role name")
ENV_CONTEXTS = ("unbalanced", "blank-list", "huge-list", "semicolon", "non-ascii")

EXPRESSIONS = {
    "reversed-parens": ")dev(",
    "dangling-and": "dev and",
    "dangling-not": "dev !",
    "unclosed": "dev or (local and prod",
    "deep-nesting": "(" * 60 + "dev" + ")" * 60,
    "huge": "dev or " * 20_000 + "dev",
    "huge-name": "x" * 100_000,
    "semicolon": "dev; DROP ROLE postgres",
    "non-ascii": "dév",
    "quoted": "'dev'",
    "nul": "dev\x00",
    "only-operators": "!!! and or",
}


# -- fixtures -----------------------------------------------------------------------


@dataclass
class Baseline:
    project: Project
    backup: Path
    passwords: dict[str, str]
    #: a test changed the database on purpose (legitimate input): re-sync
    dirty: bool = False


@pytest.fixture(scope="module")
def baseline(shared_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    root = tmp_path_factory.mktemp("hostile-project")
    project = example_project(root, shared_cluster)
    project.upgrade("dev")
    backup = tmp_path_factory.mktemp("hostile-backup")
    shutil.copytree(root, backup, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return Baseline(project, backup, dict(project.passwords))


def _files(root: Path) -> dict[str, Any]:
    """The project's files (a symlink by target, a FIFO by kind: never read)."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.name.endswith(".lock"):
            continue
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = ("symlink", os.readlink(path))
        elif path.is_file():
            found[name] = path.read_bytes()
        elif not path.is_dir():
            found[name] = ("special", path.lstat().st_mode)
    return found


@dataclass
class Hostile:
    """One test's view: run commands, then check that they were refused cleanly."""

    project: Project
    counts: Counts
    before: dict[str, Any]
    log_offset: int
    #: plaintexts that must not show up: the project's passwords and the test's
    secrets: dict[str, str] = field(default_factory=dict)
    _files_before: dict[str, Any] = field(default_factory=dict)
    _output_start: int = 0

    @property
    def cluster(self) -> Cluster:
        return self.project.cluster

    def secret(self, name: str, value: str) -> str:
        self.secrets[name] = value
        return value

    def pending_change(self) -> None:
        """A change a successful run would apply, so a refusal that still
        applied part of the run is seen."""
        grants = self.project.root / "migrations" / "repeatable" / "my_app_grants.sql"
        grants.write_text(grants.read_text() + "GRANT TEMPORARY ON DATABASE postgres TO my_app;\n")

    def _mark(self) -> None:
        self._files_before = _files(self.project.root)
        self._output_start = len(self.project.outputs)

    def alembic(
        self, *args: str, context: str | None = "dev", x: dict[str, str] | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        self._mark()
        return self.project.run(*alembic_cmd(*args, context=context, x=x), check=False, **env)

    def upgrade(self, context: str | None = "dev", **env: str) -> subprocess.CompletedProcess[str]:
        return self.alembic("upgrade", "head", context=context, **env)

    def rolekit(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        self._mark()
        return self.project.run(*rolekit_cmd(*args), check=False, **env)

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        self._mark()
        return cli(self.project, *args, **env)

    def refused(
        self, result: subprocess.CompletedProcess[str], *needles: str | re.Pattern[str]
    ) -> None:
        """A clear error naming the problem, nothing changed, nothing leaked."""
        self.counts.inputs_tried += 1
        shown = f"{result.args!r:.300}\nexit {result.returncode}\n{result.stderr[-3000:]}"
        assert result.returncode != 0, f"accepted:\n{shown}"
        assert TRACEBACK not in result.stderr, f"traceback instead of a clear error:\n{shown}"
        assert CLEAN_ERROR.search(result.stdout + result.stderr), f"no clear error line:\n{shown}"
        for needle in needles:
            found = (
                needle.search(result.stderr)
                if isinstance(needle, re.Pattern)
                else needle.lower() in result.stderr.lower()
            )
            assert found, f"{needle!r} not in the error:\n{shown}"
        assert len(result.stderr) < 20_000, f"error of {len(result.stderr)} characters"
        raw = CONTROL.search(result.stdout + result.stderr)
        assert raw is None, f"raw control character {raw.group()!r} printed (terminal injection)"
        self.assert_unchanged()
        files = _files(self.project.root)
        changed = sorted(
            k
            for k in files.keys() | self._files_before.keys()
            if files.get(k) != self._files_before.get(k)
        )
        assert not changed, f"files changed by a refused command: {changed}"
        self.assert_no_leak()

    def assert_unchanged(self) -> None:
        now = db_state(self.cluster)
        assert now == self.before, f"the database changed:\n{state_diff(self.before, now)}"

    def assert_no_leak(self) -> None:
        places = {"server log": self.cluster.log_since(self.log_offset)}
        for n, text in enumerate(self.project.outputs[self._output_start :]):
            places[f"output {n}"] = text
        secrets = {
            **{f"password {k}": v for k, v in self.project.passwords.items()},
            **self.secrets,
        }
        hits = find_leaks(places, secrets)
        self.counts.leak_hits += len(hits)
        self.counts.leak_checks += len(places) * len(secrets)
        assert not hits, hits


@pytest.fixture
def hostile(baseline: Baseline, counts: Counts) -> Iterator[Hostile]:
    project = baseline.project
    root = project.root
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.copytree(baseline.backup, root, dirs_exist_ok=True)
    if baseline.dirty:
        # The baseline's files are now stale for the database (its passwords were
        # replaced): rolekit rightly refuses them. Start the family afresh.
        project.downgrade("base", x={"terminate": "true"})
        project.upgrade("dev")
        baseline.dirty = False
    project.outputs.clear()
    project.passwords = dict(baseline.passwords)
    test = Hostile(project, counts, db_state(project.cluster), project.cluster.log_size())
    yield test
    if db_state(project.cluster) != test.before:
        baseline.dirty = True  # re-synced before the next test


# -- role names -------------------------------------------------------------------


def _revision(project: Project, body: str) -> None:
    rev = "h" + uuid.uuid4().hex[:10]  # unique: no stale bytecode between tests
    (project.root / "migrations" / "versions" / f"{rev}_hostile.py").write_text(
        f'"""hostile"""\nfrom alembic import op\nrevision = {rev!r}\ndown_revision = "0002"\n'
        f"def upgrade():\n    {body}\ndef downgrade():\n    pass\n"
    )


def _repeatables(project: Project, body: str) -> None:
    name = f"zz_hostile_{uuid.uuid4().hex[:10]}.py"
    project.write_repeatables(
        f"from rolekit.repeatable import FamilyLogin, SetLogin, SetPasswords, Sql\n"
        f"class LateSql(Sql):\n    phase = 1\nREPEATABLES = [{body}]\n",
        name=name,
    )


@pytest.mark.parametrize("name", list(ROLE_NAMES.values()), ids=list(ROLE_NAMES))
def test_hostile_group_name_in_a_revision(hostile: Hostile, name: str) -> None:
    hostile.pending_change()
    _revision(hostile.project, f"op.create_role_family({name!r}, ['okay_a', 'okay_b'])")
    hostile.refused(hostile.upgrade(), "role name")


@pytest.mark.parametrize("key", ["quote", "semicolon", "64-bytes-utf8", "nul", "reserved"])
def test_hostile_member_name_in_a_revision(hostile: Hostile, key: str) -> None:
    hostile.pending_change()
    _revision(hostile.project, f"op.create_role_family('okay', [{ROLE_NAMES[key]!r}, 'okay_b'])")
    hostile.refused(hostile.upgrade(), "member role name")


def test_hostile_name_in_drop_role_family(hostile: Hostile) -> None:
    hostile.pending_change()
    _revision(
        hostile.project,
        "op.drop_role_family('my_app', ['my_app_tom', 'my_app_jerry'], reassign_to='x; DROP ROLE y')",
    )
    hostile.refused(hostile.upgrade(), "role name")


REPEATABLE_KINDS = {
    "SetPasswords": "SetPasswords('hostile', [{n}], context='dev')",
    "Sql-target": "Sql('hostile', 'SELECT 1', targets=[{n}])",
    "SetLogin": "SetLogin('hostile', {{{n}: True}})",
    "FamilyLogin-group": "FamilyLogin('hostile', {n})",
    "FamilyLogin-member": "FamilyLogin('hostile', 'okay', ['okay_a', {n}])",
}
REPEATABLE_CASES = [
    (kind, key)
    for n, key in enumerate(ROLE_NAMES)
    for kind in [list(REPEATABLE_KINDS)[n % len(REPEATABLE_KINDS)]]
] + [(kind, "semicolon") for kind in REPEATABLE_KINDS if kind != list(REPEATABLE_KINDS)[2]]


@pytest.mark.parametrize(
    ("kind", "key"), REPEATABLE_CASES, ids=[f"{k}-{n}" for k, n in REPEATABLE_CASES]
)
def test_hostile_role_name_in_a_repeatable(hostile: Hostile, kind: str, key: str) -> None:
    hostile.pending_change()
    _repeatables(hostile.project, REPEATABLE_KINDS[kind].format(n=repr(ROLE_NAMES[key])))
    hostile.refused(hostile.upgrade(), ROLE_PROBLEM)
    # `rolekit plan` loads the same module: refused the same way.
    hostile.refused(hostile.cli("plan", "--context", "dev"), ROLE_PROBLEM)


@pytest.mark.parametrize("key", ["semicolon", "64-bytes", "injection"])
def test_hostile_member_in_the_rotation_state(hostile: Hostile, key: str) -> None:
    project = hostile.project
    hostile.pending_change()
    project.edit_state("my_app", "dev", {"login": [ROLE_NAMES[key]]})
    hostile.refused(hostile.upgrade(), "not its members")
    hostile.refused(hostile.cli("rotate", "my_app", "begin", "--context", "dev"))
    hostile.refused(hostile.cli("creds", "my_app", "--context", "dev"))


@pytest.mark.parametrize("name", list(CLI_ROLE_NAMES.values()), ids=list(CLI_ROLE_NAMES))
def test_hostile_role_name_on_the_command_line(hostile: Hostile, name: str) -> None:
    for phase in ("begin", "finish"):
        hostile.refused(hostile.cli("rotate", name, phase, "--context", "dev"), "family")
    hostile.refused(hostile.cli("creds", name, "--context", "dev"))


@pytest.mark.parametrize("name", list(CLI_ROLE_NAMES.values()), ids=list(CLI_ROLE_NAMES))
def test_hostile_role_name_in_gen_password(hostile: Hostile, name: str) -> None:
    """``gen-password --write`` must not store a key for a role rolekit would
    refuse everywhere else (a truncated, quoted or upper-case name)."""
    hostile.refused(hostile.cli("gen-password", name, "--context", "dev", "--write"), ROLE_PROBLEM)


@pytest.mark.parametrize("key", ["semicolon", "injection", "64-bytes-utf8"])
def test_hostile_family_in_rotate_with_apply(hostile: Hostile, key: str) -> None:
    """The real command line, with --apply: still refused before any upgrade."""
    hostile.pending_change()
    result = hostile.rolekit("rotate", ROLE_NAMES[key], "begin", "--context", "dev", "--apply")
    hostile.refused(result, "family")


# -- contexts -----------------------------------------------------------------------


@pytest.mark.parametrize("value", list(ACTIVE_CONTEXTS.values()), ids=list(ACTIVE_CONTEXTS))
def test_hostile_context_in_x_argument(hostile: Hostile, value: str) -> None:
    hostile.pending_change()
    hostile.refused(hostile.upgrade(context=value), "context")


@pytest.mark.parametrize("key", ENV_CONTEXTS)
def test_hostile_context_in_environment(hostile: Hostile, key: str) -> None:
    hostile.pending_change()
    hostile.refused(hostile.upgrade(context=None, ROLEKIT_CONTEXT=ACTIVE_CONTEXTS[key]), "context")


@pytest.mark.parametrize("value", list(ACTIVE_CONTEXTS.values()), ids=list(ACTIVE_CONTEXTS))
def test_hostile_context_on_the_command_line(hostile: Hostile, value: str) -> None:
    for args in (
        ("rotate", "my_app", "begin"),
        ("creds", "my_app"),
        ("gen-password", "my_app_tom", "--write"),
        ("plan",),
        ("status",),
    ):
        hostile.refused(hostile.cli(*args, "--context", value), "context")
    hostile.refused(hostile.cli("rotate", "my_app", "begin", ROLEKIT_CONTEXT=value), "context")


def test_empty_context_is_no_context(hostile: Hostile) -> None:
    """An empty ``-x context=``/``ROLEKIT_CONTEXT`` means no context (as if
    omitted: nothing context-tagged runs); an empty ``--context`` for a
    command that needs one is refused."""
    for result in (hostile.upgrade(context=""), hostile.upgrade(context=None, ROLEKIT_CONTEXT="")):
        hostile.counts.inputs_tried += 1
        assert result.returncode == 0 and TRACEBACK not in result.stderr, result.stderr
        assert "skipped set_passwords_dev: no context given" in result.stderr
        hostile.assert_unchanged()
        hostile.assert_no_leak()
    for args in (
        ("rotate", "my_app", "begin"),
        ("creds", "my_app"),
        ("gen-password", "my_app_tom"),
    ):
        hostile.refused(hostile.cli(*args, "--context", ""), "no context given")


@pytest.mark.parametrize("value", list(EXPRESSIONS.values()), ids=list(EXPRESSIONS))
def test_hostile_context_expression_in_a_repeatable(hostile: Hostile, value: str) -> None:
    hostile.pending_change()
    _repeatables(hostile.project, f"Sql('hostile', 'SELECT 1', context={value!r})")
    hostile.refused(hostile.upgrade(), "context expression")
    hostile.refused(hostile.cli("plan", "--context", "dev"), "context expression")


# -- secrets files --------------------------------------------------------------------


def _secrets_path(project: Project) -> Path:
    return project.root / "passwords.env"


def _write_secrets(project: Project, data: bytes) -> None:
    path = _secrets_path(project)
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def _valid_lines(project: Project) -> bytes:
    return _secrets_path(project).read_bytes()


def _refused_everywhere(hostile: Hostile, *needles: str, **env: str) -> None:
    """The upgrade, creds and rotate begin all refuse the file."""
    hostile.pending_change()
    hostile.refused(hostile.upgrade(**env), "secrets file", *needles)
    hostile.refused(hostile.cli("creds", "my_app", "--context", "dev", **env), *needles)
    hostile.refused(hostile.cli("rotate", "my_app", "begin", "--context", "dev", **env), *needles)


JUNK = {
    "random-binary": os.urandom(4096) + b"\x00",
    "nul-in-value": b"my_app_tom.password.dev=Qj7abc\x00def0123456789\n",
    "invalid-utf8": b"my_app_tom.password.dev=Qj7caf\xe9-0123456789abc\n",
    "escape-sequences": b"my_app_tom.password.dev=Qj7\x1b[2J\x1b]0;pwned\x07-0123456789\n",
}


@pytest.mark.parametrize("junk", list(JUNK.values()), ids=list(JUNK))
def test_secrets_file_with_binary_junk(hostile: Hostile, junk: bytes) -> None:
    _write_secrets(hostile.project, _valid_lines(hostile.project) + junk)
    _refused_everywhere(hostile, "binary")
    output = "\n".join(hostile.project.outputs)
    assert "Qj7" not in output and "\x1b" not in output


def test_secrets_file_with_duplicate_keys(hostile: Hostile) -> None:
    first = hostile.secret("first value", "Qj7FirstDuplicateValue-0123456789")
    second = hostile.secret("second value", "Qj7SecondDuplicateValue-987654321")
    lines = _valid_lines(hostile.project)
    _write_secrets(
        hostile.project,
        lines
        + f"my_app_jerry.password.dev={first}\n# c\nmy_app_jerry.password.dev={second}\n".encode(),
    )
    _refused_everywhere(hostile, "duplicate")


@pytest.mark.parametrize("size", [10 * 1024 * 1024, 70 * 1024], ids=["10MB-line", "70KB-line"])
def test_secrets_file_with_a_huge_line(hostile: Hostile, size: int) -> None:
    value = hostile.secret("huge value", "Qj7" + "x" * (size - 30))
    _write_secrets(
        hostile.project,
        _valid_lines(hostile.project) + f"my_app_jerry.password.local={value}\n".encode(),
    )
    _refused_everywhere(hostile, "KiB")


def test_secrets_file_with_a_password_alone_on_a_line(hostile: Hostile) -> None:
    pasted = hostile.secret("pasted password", "Qj7PastedAloneOnALine-0123456789")
    _write_secrets(hostile.project, _valid_lines(hostile.project) + f"{pasted}\n".encode())
    _refused_everywhere(hostile, "malformed")


def test_secrets_file_that_is_a_symlink(hostile: Hostile, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.env"
    other = hostile.secret("symlink target", "Qj7BehindTheSymlink-0123456789ab")
    target.write_bytes(
        _valid_lines(hostile.project).replace(
            hostile.project.passwords["my_app_tom.dev"].encode(), other.encode()
        )
    )
    target.chmod(0o600)
    path = _secrets_path(hostile.project)
    path.unlink()
    path.symlink_to(target)
    _refused_everywhere(hostile, "symlink")


def test_secrets_file_that_is_a_fifo(hostile: Hostile) -> None:
    path = _secrets_path(hostile.project)
    path.unlink()
    os.mkfifo(path, 0o600)
    _refused_everywhere(hostile, "not a regular file")


def _age_keys(tmp_path: Path) -> tuple[Path, str, Path]:
    if shutil.which("age-keygen") is None:
        pytest.fail("the Debian package 'age' is required (make test installs it)")
    right, wrong = tmp_path / "right.txt", tmp_path / "wrong.txt"
    for key in (right, wrong):
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(right)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return right, recipient, wrong


def test_age_file_with_the_wrong_key(hostile: Hostile, baseline: Baseline, tmp_path: Path) -> None:
    project = hostile.project
    right, recipient, wrong = _age_keys(tmp_path)
    tom = hostile.secret("prod password", "Qj7" + "p" * 29)
    jerry = hostile.secret("prod password 2", "Qj7" + "q" * 29)
    prod = project.root / "passwords.prod.env.age"
    plaintext = f"my_app_tom.password.prod={tom}\nmy_app_jerry.password.prod={jerry}\n"
    subprocess.run(
        ["age", "-r", recipient, "-o", str(prod)], input=plaintext, text=True, check=True
    )
    hostile.pending_change()
    env = {"ROLEKIT_AGE_IDENTITY_FILE": str(wrong)}
    hostile.refused(hostile.upgrade("prod", **env), "passwords.prod.env.age", "wrong identity")
    hostile.refused(hostile.cli("creds", "my_app", "--context", "prod", **env), "wrong identity")
    hostile.refused(
        hostile.cli("rotate", "my_app", "begin", "--context", "prod", **env), "wrong identity"
    )
    # No identity at all: refused too.
    hostile.refused(hostile.upgrade("prod"), "no identity")
    # The right key works: the values are read exactly.
    baseline.dirty = True
    result = hostile.upgrade("prod", ROLEKIT_AGE_IDENTITY_FILE=str(right))
    assert result.returncode == 0, result.stderr
    assert login_works(project.cluster, "my_app_tom", tom)
    hostile.assert_no_leak()


# -- legitimate oddities: they must work ------------------------------------------------

LEGIT = {
    "crlf": (b"", b"\r\n"),
    "bom": (b"\xef\xbb\xbf", b"\n"),
    "bom-crlf": (b"\xef\xbb\xbf", b"\r\n"),
}


@pytest.mark.parametrize(("bom", "eol"), list(LEGIT.values()), ids=list(LEGIT))
def test_crlf_and_bom_work_and_values_are_exact(
    hostile: Hostile, baseline: Baseline, bom: bytes, eol: bytes
) -> None:
    project = hostile.project
    baseline.dirty = True
    tom = hostile.secret("new tom", "Qj7NewTomValue-" + uuid.uuid4().hex)
    jerry = hostile.secret("new jerry", "Qj7NewJerryValue-" + uuid.uuid4().hex)
    project.passwords.update({"my_app_tom.dev": tom, "my_app_jerry.dev": jerry})
    fingerprint_key = project.secrets.load().get("rolekit.fingerprint_key")
    lines = [  # tom first: a BOM glued to the first key would lose it
        f"my_app_tom.password.dev={tom}",
        "# a comment",
        f"my_app_jerry.password.dev={jerry}",
        f"my_app_tom.password.local={project.passwords['my_app_tom.local']}",
        f"my_app_jerry.password.local={project.passwords['my_app_jerry.local']}",
    ] + ([f"rolekit.fingerprint_key={fingerprint_key.reveal()}"] if fingerprint_key else [])
    _write_secrets(project, bom + eol.join(line.encode() for line in lines) + eol)
    hostile.counts.inputs_tried += 1

    result = hostile.upgrade()
    assert result.returncode == 0 and TRACEBACK not in result.stderr, result.stderr
    assert login_works(project.cluster, "my_app_tom", tom)
    creds = cli(project, "creds", "my_app", "--context", "dev", "--json", record=False)
    assert creds.returncode == 0 and f'"password": "{tom}"' in creds.stdout

    # rotate begin writes jerry's new password: BOM and line endings are kept.
    result = hostile.rolekit("rotate", "my_app", "begin", "--context", "dev", "--apply")
    assert result.returncode == 0, result.stderr
    data = _secrets_path(project).read_bytes()
    assert data.startswith(bom) and data.count(b"\n") == data.count(eol)
    new_jerry = project.secrets.get("my_app_jerry", "dev").reveal()
    assert "\r" not in new_jerry and "\ufeff" not in new_jerry
    hostile.secret("rotated jerry", new_jerry)
    assert login_works(project.cluster, "my_app_jerry", new_jerry)
    hostile.assert_no_leak()


def test_quoted_special_characters_are_taken_literally(
    hostile: Hostile, baseline: Baseline
) -> None:
    project = hostile.project
    baseline.dirty = True
    value = hostile.secret("special", 'Qj7 $HOME ${USER} #not-a-comment "q" `x` \\n end')
    project.passwords["my_app_tom.dev"] = value
    project.set_password("my_app_tom", "dev", value)  # rolekit's writer quotes it
    hostile.counts.inputs_tried += 1
    result = hostile.upgrade()
    assert result.returncode == 0, result.stderr
    assert login_works(project.cluster, "my_app_tom", value)
    hostile.assert_no_leak()
