"""The README's "Rotate on a schedule": each example is run or validated here.

* the cron line runs, with its own command and the publish script it names,
  against a real server: as written (not due: reads only), then due;
* the Kubernetes CronJob (and the Deployment that reads the Secret it
  publishes) is validated against Kubernetes' schemas (kubernetes-validate,
  strict: an unknown field fails), and so is the Secret rolekit renders;
* the GitHub Actions job is validated against its schema (check-jsonschema's
  copy of SchemaStore's github-workflow schema).

The rolekit command in each is parsed by rolekit's own parser, so a renamed
option breaks this test instead of a user's schedule.
"""

from __future__ import annotations

import argparse
import copy
import grp
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cronsim import CronSim
from pyrage import x25519
from sqlalchemy.engine import make_url

from rolekit.cli import _parser
from rolekit.client import CredentialsProvider
from rolekit.rotation.creds_formats import k8s_name
from rolekit.secrets import AGE_IDENTITY_FILE_ENV, SecretsFile, generate_password
from rolekit.testing import Project
from tests.guards.helpers import can_login

SCHEDULE = Path(__file__).resolve().parents[1] / "examples" / "schedule"
DEPLOYMENT = SCHEDULE.parent / "kubernetes" / "deployment.yaml"
#: Kubernetes versions the manifests must be valid for: the oldest with a
#: CronJob timeZone (GA in 1.27) still supported widely, and the newest known
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())


def rolekit_command(script: str) -> argparse.Namespace:
    """The ``rolekit ...`` command of a shell script, parsed by rolekit's parser."""
    joined = script.replace("\\\n", " ")
    [line] = [line.strip() for line in joined.splitlines() if "rolekit rotate" in line]
    command = re.split(r"\s(?:\|\||>>|&&|;)\s", line[line.index("rolekit rotate") :])[0]
    argv = shlex.split(command)
    assert argv[0] == "rolekit"
    args = _parser().parse_args(argv[1:])
    assert (args.family, args.phase, args.context) == ("my_app", "auto", "prod")
    assert args.apply and args.max_age == "90d" and args.move_timeout == 900
    return args


# -- cron ---------------------------------------------------------------------------


def parse_crontab(text: str) -> tuple[dict[str, str], str, str]:
    """A user crontab's variables, its one job's schedule, and that job's command."""
    variables: dict[str, str] = {}
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            name, value = line.split("=", 1)
            variables[name] = value
        else:
            fields = line.split(None, 5)
            jobs.append((" ".join(fields[:5]), fields[5]))
    [(schedule, command)] = jobs
    return variables, schedule, command


def test_the_cron_line_runs_as_written_then_rotates_when_due(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables, schedule, command = parse_crontab((SCHEDULE / "rolekit.crontab").read_text())
    assert next(CronSim(schedule, datetime(2026, 1, 1))) == datetime(2026, 1, 1, 3, 17)
    rolekit_command(command)
    assert set(variables) == {
        "PATH", AGE_IDENTITY_FILE_ENV, "CREDENTIALS_FILE", "CREDENTIALS_GROUP", "MAILTO",
    }  # fmt: skip
    assert variables["PATH"].startswith("/srv/my_app/.venv/bin:")

    # prod as the example project declares it: passwords in passwords.prod.env.age
    identity = tmp_path / "prod-age-identity.txt"
    identity.write_text(str(x25519.Identity.generate()) + "\n")
    identity.chmod(0o600)
    monkeypatch.setenv(AGE_IDENTITY_FILE_ENV, str(identity))
    age_file = SecretsFile(project.root / "passwords.prod.env.age")
    first_password = generate_password()
    age_file.set("my_app_tom", "prod", first_password)
    age_file.ensure_fingerprint_key()
    project.upgrade("prod", **{AGE_IDENTITY_FILE_ENV: str(identity)})
    shutil.copy(SCHEDULE / "publish-to-file.sh", project.root / "publish-to-file.sh")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # the crontab's variables, with this machine's paths: the test's virtualenv
    # stands for the project's, tmp_path for the identity's and the apps' folders
    env = project.env(
        **{AGE_IDENTITY_FILE_ENV: str(identity), "CREDENTIALS_FILE": str(run_dir / "creds.json")},
        CREDENTIALS_GROUP=grp.getgrgid(os.getgid()).gr_name,
        PATH=variables["PATH"].replace("/srv/my_app/.venv/bin", str(Path(sys.executable).parent)),
    )

    def cron(line: str) -> list[dict[str, Any]]:
        line = line.replace("cd /srv/my_app", f"cd {shlex.quote(str(project.root))}")
        log = project.root / "rotate.log"
        log.unlink(missing_ok=True)
        subprocess.run(["/bin/sh", "-c", line], env=env, check=True, timeout=300)
        text = log.read_text()
        assert first_password not in text
        return [json.loads(entry) for entry in text.splitlines() if entry.startswith("{")]

    # as written: the password is a minute old, so the run only reads
    events = cron(command)
    assert events[-1] == {"event": "done", "result": "not due"}, events
    assert not (run_dir / "creds.json").exists()
    # due: rotated, published to the file the applications read
    events = cron(command.replace("--max-age 90d", "--max-age 0"))
    assert events[-1] == {"event": "done", "result": "rotated"}, events
    published = run_dir / "creds.json"
    assert stat.S_IMODE(published.stat().st_mode) == 0o640
    assert [p.name for p in run_dir.iterdir()] == ["creds.json"]  # no temporary file left
    creds = CredentialsProvider.from_file(published).current()
    assert creds.preferred[0] == "my_app_jerry"
    assert can_login(project) == {"my_app_tom": False, "my_app_jerry": True}
    user, secret = creds.preferred
    with project.cluster.connect(user, secret.reveal()) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("my_app",)  # the member acts as the group
    assert first_password.encode() not in age_file.path.read_bytes()
    assert age_file.get("my_app_jerry", "prod").reveal() == creds.preferred[1].reveal()


# -- Kubernetes ---------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_cronjob_manifest_is_valid_kubernetes(version: str) -> None:
    docs = _documents(SCHEDULE / "cronjob.yaml") + _documents(DEPLOYMENT)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {doc["kind"]: doc for doc in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "CronJob", "Deployment"}
    # the validation can fail: a misspelt field is refused
    broken = copy.deepcopy(kinds["CronJob"])
    broken["spec"]["concurencyPolicy"] = broken["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_cronjob_publishes_the_secret_the_application_reads() -> None:
    kinds = {doc["kind"]: doc for doc in _documents(SCHEDULE / "cronjob.yaml")}
    cronjob = kinds["CronJob"]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    pod = cronjob["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = rolekit_command(container["args"][0])
    assert args.publish == "kubectl apply --server-side --field-manager=rolekit -f -"
    assert args.publish_format == "k8s-secret" and args.git_commit and args.git_push
    # rolekit is PID 1 (exec), so a node drain's SIGTERM reaches it
    assert "\nexec rolekit rotate " in container["args"][0]
    secret = k8s_name("my_app", "prod")
    # the Role lets kubectl apply exactly that Secret
    named = [rule for rule in kinds["Role"]["rules"] if "resourceNames" in rule]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret],
            "verbs": ["get", "patch"],
        }
    ]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    # no secret value in the manifest: the migrator's password comes from a Secret
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env["PGPASSWORD"] and "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]
    assert make_url(env["DATABASE_URL"]["value"]).password is None
    # the application's Deployment mounts that Secret and reads it with from_file
    [deployment] = _documents(DEPLOYMENT)
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes] == [secret]


def test_the_secret_rolekit_renders_is_valid_kubernetes(project: Project) -> None:
    project.upgrade("dev")
    rendered = project.rolekit("creds", "my_app", "--context", "dev", "--format", "k8s-secret")
    document = json.loads(rendered.stdout)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


# -- CI schedule --------------------------------------------------------------------


def _check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_ci_schedule_job_is_a_valid_github_workflow(tmp_path: Path) -> None:
    workflow = SCHEDULE / "github-actions.yaml"
    done = _check_workflow(workflow)
    assert done.returncode == 0, done.stdout + done.stderr
    # the validation can fail: a job without runs-on is refused
    data = yaml.safe_load(workflow.read_text())
    del data["jobs"]["rotate"]["runs-on"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(data))
    assert _check_workflow(broken).returncode != 0

    # `on` is YAML 1.1's boolean true to PyYAML
    assert data[True]["schedule"] == [{"cron": "17 3 * * *"}]
    assert next(CronSim("17 3 * * *", datetime(2026, 1, 1))) == datetime(2026, 1, 1, 3, 17)
    [step] = [s for s in data["jobs"]["rotate"]["steps"] if "rolekit rotate" in s.get("run", "")]
    args = rolekit_command(step["run"])
    assert args.git_commit and args.git_push and "file:///dev/stdin" in args.publish
    assert data["concurrency"]["cancel-in-progress"] is False
    # secrets only through the secrets context, never written into the file
    assert step["env"]["PGPASSWORD"].startswith("${{ secrets.")
