"""The ``rolekit`` command line.

Exit codes: 0 success; 1 ``status``/``check`` found a problem; 2 bad input
or configuration; 3 a guard refused (nothing changed); 4 the rotation state
does not allow the step; 5 the database could not be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg2
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool

from rolekit import inspection
from rolekit._names import check_role_name
from rolekit.contexts import parse_contexts, primary_context
from rolekit.errors import RolekitError
from rolekit.family import RoleFamily
from rolekit.repeatable import changelog
from rolekit.repeatable.engine import RunContext, load_repeatables, login_members, plan
from rolekit.rotation import workflow
from rolekit.rotation.state import RotationState
from rolekit.runtime.config import Settings
from rolekit.runtime.session import Session
from rolekit.secrets import SecretsFile, generate_password

EXIT_PROBLEM, EXIT_UNREACHABLE = 1, 5

Command = Callable[[argparse.Namespace, "_Output"], int]

_EXAMPLES = {
    "plan": "rolekit plan --context prod          # what the next upgrade would run, and why",
    "rotate": (
        "rolekit rotate my_app begin --context prod --apply\n"
        "  rolekit creds my_app --context prod --json   # redeploy apps with these\n"
        "  rolekit rotate my_app finish --context prod --apply --drain-timeout 300"
    ),
    "creds": 'rolekit creds my_app --context prod --json   # {"user": ..., "password": ...}',
    "status": "rolekit status --context prod --json",
    "check": "rolekit check --context prod || echo drift",
    "gen-password": "rolekit gen-password my_app_tom --context dev --write",
}


class _Output:
    """Prints human text or one JSON document, never both."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, default=str) if self.as_json else text)


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(args.config)


def _raw_context(args: argparse.Namespace) -> str:
    return str(args.context or os.environ.get("ROLEKIT_CONTEXT") or "")


def _context(args: argparse.Namespace, *, required: bool = True) -> str | None:
    """The first context given (it picks secrets and login state)."""
    primary = primary_context(_raw_context(args))
    if primary is None and required:
        raise RolekitError(
            "no context given: pass --context (e.g. --context prod) or set ROLEKIT_CONTEXT"
        )
    return primary


def _family(settings: Settings, group: str) -> RoleFamily:
    families = login_members(load_repeatables(settings.repeatables_dir))
    if group not in families:
        known = ", ".join(sorted(families)) or "none"
        raise RolekitError(
            f"no FamilyLogin repeatable declares family {group!r} in {settings.repeatables_dir} "
            f"(known: {known})"
        )
    return families[group].family


@contextlib.contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    """A read-only session on the project's database, rolled back at the end."""
    engine = create_engine(settings.require_url(), poolclass=pool.NullPool)
    try:
        connection = engine.connect()
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        raise _Unreachable(f"cannot connect to the database: {reason}") from None
    try:
        with connection.begin() as tx:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            yield Session(MigrationContext.configure(connection))
            tx.rollback()
    finally:
        connection.close()
        engine.dispose()


class _Unreachable(RolekitError):
    exit_code = EXIT_UNREACHABLE


def _upgrade(settings: Settings, context: str, extra: Sequence[str] = ()) -> None:
    config = Config(str(settings.root / "alembic.ini"))
    config.cmd_opts = argparse.Namespace(x=[f"context={context}", *extra])
    command.upgrade(config, "head")


# -- commands -------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace, out: _Output) -> int:
    settings = _settings(args)
    context = _context(args, required=False)
    repeatables = load_repeatables(settings.repeatables_dir)
    run = RunContext(
        settings=settings,
        contexts=parse_contexts(_raw_context(args)),
        primary=context,
        rotation=RotationState.load(settings.state_file),
    )
    with _session(settings) as session:
        state = changelog.read(session)
        run.salt = state.salt
        items = plan(session, run, repeatables, state, roles_must_exist=False)
    rows: list[dict[str, str | None]] = [
        {
            "id": i.repeatable.id,
            "kind": type(i.repeatable).__name__,
            "status": i.status,
            "reason": i.reason,
            "context": i.repeatable.context.text if i.repeatable.context else None,
            "source": i.repeatable.source,
        }
        for i in items
    ]
    width = max((len(i.repeatable.id) for i in items), default=10)
    text = "\n".join(f"{r['id']:<{width}}  {r['status']:<9}  {r['reason']}" for r in rows)
    out.emit({"context": context, "repeatables": rows}, text or "no repeatables declared")
    return 0


def cmd_rotate(args: argparse.Namespace, out: _Output) -> int:
    settings = _settings(args)
    context = _context(args)
    assert context is not None
    family = _family(settings, args.family)
    if args.phase == "begin":
        step = workflow.begin(settings, family, context)
        extra: list[str] = []
    else:
        step = workflow.finish(settings, family, context)
        extra = [f"drain_timeout={args.drain_timeout}"] if args.drain_timeout is not None else []
        extra += ["terminate=true"] if args.terminate else []
    applied = False
    if args.apply:
        try:
            _upgrade(settings, context, extra)
        except BaseException:
            # The upgrade rolled back: put the state back so files and database agree.
            workflow.restore(settings, step)
            raise
        applied = True
    after = step.after
    next_step = {
        "overlap": f"hand out the new credentials (rolekit creds {family.group} --context {context}), "
        f"then: rolekit rotate {family.group} finish --context {context}",
        "steady": "done",
    }.get(after.phase, "")
    if not applied:
        next_step = f"run: alembic -x context={context} upgrade head (or re-run with --apply); then {next_step}"
    out.emit(
        {
            "family": family.group,
            "context": context,
            "phase": after.phase,
            "login": list(after.login),
            "incoming": after.incoming,
            "applied": applied,
            "next": next_step,
        },
        f"{family.group} ({context}): {step.before.phase} -> {after.phase}; "
        f"login: {', '.join(after.login)}{'; applied' if applied else ''}\nnext: {next_step}",
    )
    return 0


def cmd_creds(args: argparse.Namespace, out: _Output) -> int:
    settings = _settings(args)
    context = _context(args)
    assert context is not None
    state = RotationState.load(settings.state_file).get(args.family, context)
    if state is None or state.preferred is None:
        raise RolekitError(f"no member of {args.family!r} may log in in context {context!r}")
    secrets = SecretsFile(settings.secrets_file(context), repo_root=settings.root)
    password = secrets.get(state.preferred, context).reveal()
    out.emit(
        {"user": state.preferred, "password": password},
        f"user={state.preferred}\npassword={password}",
    )
    return 0


def _reports(
    args: argparse.Namespace,
) -> tuple[list[inspection.FamilyReport], list[dict[str, Any]]]:
    settings = _settings(args)
    context = _context(args, required=False)
    rotation = RotationState.load(settings.state_file)
    repeatables = load_repeatables(settings.repeatables_dir)
    with _session(settings) as session:
        set_at = inspection.password_set_times(session)
        reports = [
            inspection.inspect_family(
                session,
                rep.family,
                rotation.get(group, context) if context else None,
                context,
                set_at,
            )
            for group, rep in sorted(login_members(repeatables).items())
        ]
        runs = inspection.last_runs(session)
    return reports, runs


def cmd_status(args: argparse.Namespace, out: _Output) -> int:
    reports, runs = _reports(args)
    lines = []
    for r in reports:
        lines.append(
            f"{r.group}  context={r.context or '-'}  phase={r.phase or '-'}  apps use: {r.preferred or '-'}"
        )
        for m in r.members:
            login = "LOGIN  " if m.can_login else "NOLOGIN"
            lines.append(
                f"  {m.name:<24} {login} sessions={m.sessions:<4} password_set={m.password_set_at or '-'}"
                f"  valid_until={m.valid_until or '-'}"
                f"  membership={'ok' if m.membership_ok else 'WRONG'}"
            )
        lines += [f"  problem: {p}" for p in r.problems]
    lines.append("last repeatable runs:")
    lines += [
        f"  {x['applied_at']}  {x['id']} ({x['exec_type']}, {x['context'] or '-'})" for x in runs
    ] or ["  none"]
    out.emit({"families": [r.to_json() for r in reports], "last_runs": runs}, "\n".join(lines))
    return EXIT_PROBLEM if any(r.problems for r in reports) else 0


def cmd_check(args: argparse.Namespace, out: _Output) -> int:
    reports, _ = _reports(args)
    problems = [f"{r.group}: {p}" for r in reports for p in r.problems]
    out.emit({"ok": not problems, "problems": problems}, "\n".join(problems) or "no drift")
    return EXIT_PROBLEM if problems else 0


def cmd_gen_password(args: argparse.Namespace, out: _Output) -> int:
    settings = _settings(args)
    context = _context(args)
    assert context is not None
    check_role_name(args.role)
    password = generate_password(max(args.length, settings.min_length(context)))
    path = settings.secrets_file(context)
    if args.write:
        secrets = SecretsFile(path, repo_root=settings.root)
        secrets.set(args.role, context, password)
        secrets.ensure_fingerprint_key()
    shown = password if args.show or not args.write else None
    text = f"wrote a new password for {args.role} ({context}) to {path}" if args.write else ""
    if shown:
        text = (text + "\n" if text else "") + shown
    out.emit(
        {
            "role": args.role,
            "context": context,
            "written_to": str(path) if args.write else None,
            "password": shown,
        },
        text,
    )
    return 0


# -- parser ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default="alembic.ini", help="Alembic config (default: %(default)s)"
    )
    common.add_argument("--json", action="store_true", help="print one JSON document")
    ctx = argparse.ArgumentParser(add_help=False)
    ctx.add_argument(
        "--context", help="the environment, e.g. dev or prod (default: $ROLEKIT_CONTEXT)"
    )

    parser = argparse.ArgumentParser(
        prog="rolekit",
        description="Zero-downtime PostgreSQL password rotation with Alembic. Two members per "
        "role family take turns: begin lets the standby log in with a fresh password, apps move "
        "over, finish waits for the old member to drain and disables it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 ok, 1 problem found, 2 bad input, 3 guard refused, "
        "4 wrong rotation phase, 5 database unreachable\n\nexample:\n  " + _EXAMPLES["rotate"],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, fn: Command, description: str = "") -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=help,
            description=f"{help}.\n\n{description}".strip(),
            parents=[common, ctx],
            epilog="example:\n  " + _EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(fn=fn)
        return parser

    add(
        "plan",
        "show which repeatables the next upgrade would run, and why; changes nothing",
        cmd_plan,
    )
    p = add(
        "rotate",
        "move a family to the next rotation phase",
        cmd_rotate,
        "begin: the standby member gets a fresh password in the context's secrets file and\n"
        "  the state file lets both members log in (overlap). Hand out 'rolekit creds'.\n"
        "finish: the state file lets only the new member log in; the upgrade waits until\n"
        "  the old member has no sessions (showing who is left), then disables it.\n"
        "Without --apply only the files change: commit them and let the deploy run\n"
        "'alembic -x context=C upgrade head' (GitOps).",
    )
    p.add_argument("family", help="the group role, e.g. my_app")
    p.add_argument("phase", choices=["begin", "finish"])
    p.add_argument("--apply", action="store_true", help="also run 'alembic upgrade head' now")
    p.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="finish: seconds to wait for the old member's sessions",
    )
    p.add_argument(
        "--terminate", action="store_true", help="finish: end sessions left after the drain timeout"
    )
    add("creds", "print the credentials applications should use now", cmd_creds).add_argument(
        "family"
    )
    add(
        "status",
        "members, logins, sessions, password age and expiry, membership options, last runs",
        cmd_status,
    )
    add("check", "compare the catalog with what the migrations declare; exit 1 on drift", cmd_check)
    p = add(
        "gen-password",
        "generate a strong password, optionally into the secrets file",
        cmd_gen_password,
    )
    p.add_argument("role")
    p.add_argument("--write", action="store_true", help="store it under <role>.password.<context>")
    p.add_argument("--show", action="store_true", help="print it even with --write")
    p.add_argument("--length", type=int, default=32)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = _Output(args.json)
    try:
        code: int = args.fn(args, out)
        return code
    except RolekitError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": exc.exit_code}))
        print(f"rolekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except psycopg2.Error as exc:
        print(f"rolekit: database error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    except sqlalchemy.exc.DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        print(f"rolekit: database error: {first}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
