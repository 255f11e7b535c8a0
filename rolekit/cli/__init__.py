"""The ``rolekit`` command line: parses arguments, calls :mod:`rolekit.command`, renders.

Exit codes (:class:`rolekit.errors.ExitCode`): 0 success; 1 ``status``/``check``
found a problem, or a check after a commit failed; 2 bad input or
configuration; 3 a guard refused (nothing changed); 4 the rotation state does
not allow the step, or another run holds the lock; 5 the database could not
be reached; 143 interrupted by SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg2
import sqlalchemy

import rolekit
from rolekit import command
from rolekit._fileio import atomic_write, require_replaceable
from rolekit.cli import _completion
from rolekit.cli import _init as init_args
from rolekit.cli import _rotate as rotate_args
from rolekit.cli import _status as status_text
from rolekit.errors import ExitCode, RolekitError, first_line
from rolekit.model import variables
from rolekit.model.contexts import primary_context
from rolekit.project.config import DEFAULT_DRAIN_QUIET_PERIOD, DEFAULT_DRAIN_TIMEOUT
from rolekit.rotation import creds_formats
from rolekit.rotation.workflow import Transition
from rolekit.secrets import DEFAULT_PASSWORD_LENGTH

Command = Callable[[argparse.Namespace, "_Output"], int]

_EXAMPLES = {
    "plan": "rolekit plan --context prod          # what the next upgrade would run, and why",
    "rotate": (
        "rolekit rotate my_app begin --context prod --apply\n"
        "  rolekit creds my_app --context prod --json   # redeploy apps with these\n"
        "  rolekit rotate my_app finish --context prod --apply --drain-timeout 300"
    ),
    "creds": "rolekit creds my_app --context prod --format k8s-secret | kubectl apply --server-side --field-manager=rolekit -f -",
    "status": "rolekit status --context prod --json\n"
    "  rolekit status --context prod --format openmetrics --output /var/lib/node_exporter/textfile/rolekit.prom",
    "check": "rolekit check --context prod || echo drift",
    "gen-password": "rolekit gen-password my_app_tom --context dev --write",
    "clear-checksums": "rolekit clear-checksums allow_login_for_my_app   # next upgrade re-runs it",
    "init": "rolekit init --family my_app --members my_app_tom,my_app_jerry --dry-run",
}


class Interrupted(BaseException):
    """SIGTERM (a cancelled CI job): unwinds so connections close and nothing half-writes."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


class _Output:
    """Prints human text or one JSON document, never both."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, default=str) if self.as_json else text)


def _raw_context(args: argparse.Namespace) -> str:
    return str(args.context or variables.CONTEXT.get() or "")


def _context(args: argparse.Namespace) -> str:
    return command.require_context(_raw_context(args))


# -- commands -------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace, out: _Output) -> int:
    context = _raw_context(args) or None
    rows = command.plan(args.config, context)
    width = max((len(r.id) for r in rows), default=10)
    text = "\n".join(f"{r.id:<{width}}  {r.status:<9}  {r.reason}" for r in rows)
    primary = primary_context(context)
    out.emit(
        {"context": primary, "repeatables": [asdict(r) for r in rows]},
        text or "no repeatables declared",
    )
    return ExitCode.OK


def _render_transition(step: Transition, out: _Output) -> None:
    after, group, context = step.after, step.family, step.context
    next_step = {
        "overlap": f"hand out the new credentials (rolekit creds {group} --context {context}), "
        f"then: rolekit rotate {group} finish --context {context}",
        "steady": "done",
    }.get(after.phase.value, "")
    if not step.applied:
        next_step = f"run: alembic -x context={context} upgrade head (or re-run with --apply); then {next_step}"
    resumed = "; completed an earlier run interrupted after its commit" if step.resumed else ""
    out.emit(
        {
            "family": group,
            "context": context,
            "phase": after.phase.value,
            "login": list(after.login),
            "incoming": after.incoming,
            "applied": step.applied,
            "resumed": step.resumed,
            "next": next_step,
        },
        f"{group} ({context}): {step.before.phase.value} -> {after.phase.value}; "
        f"login: {', '.join(after.login)}{'; applied' if step.applied else ''}{resumed}\n"
        f"next: {next_step}",
    )


def cmd_rotate(args: argparse.Namespace, out: _Output) -> int:
    rotate_args.resolve_target(args)
    rotate_args.check_phase_options(args)
    context = _context(args)
    if args.phase == "auto":
        return _rotate_auto(args, context)
    if args.phase == "begin":
        step = command.rotate_begin(args.config, args.family, context, apply=args.apply)
    else:
        step = command.rotate_finish(
            args.config,
            args.family,
            context,
            apply=args.apply,
            drain_timeout=args.drain_timeout,
            quiet_period=args.quiet_period,
            terminate=args.terminate,
        )
    _render_transition(step, out)
    return ExitCode.OK


def _rotate_auto(args: argparse.Namespace, context: str) -> int:
    """One JSON event per line with --json (for logs and alerts), else a line of text each."""

    def emit(event: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(event, default=str), flush=True)
        else:
            details = ", ".join(f"{k}={v}" for k, v in event.items() if k != "event")
            print(f"{event['event']}: {details}", flush=True)

    options: dict[str, Any] = dict(
        max_age=args.max_age,
        publish=args.publish,
        publish_format=args.publish_format or "json",
        publish_timeout=args.publish_timeout,
        move_timeout=args.move_timeout,
        quiet_period=args.quiet_period,
        git_commit=args.git_commit,
        git_push=args.git_push,
        emit=emit,
    )
    if args.all:
        results = command.rotate_auto_all(args.config, context, apply=args.apply, **options)
        emit({"event": "done", "results": results})
        return ExitCode.OK
    result = command.rotate_auto(args.config, args.family, context, apply=args.apply, **options)
    emit({"event": "done", "result": result})
    return ExitCode.OK


def _output_file(output: str | None) -> Path | None:
    """The file ``--output`` names, refused before any secret is read.

    An empty value (an unset shell variable) would otherwise mean "no
    --output": the terminal form, password included, on stdout.
    """
    if output is None:
        return None
    if not output:
        raise RolekitError("--output is empty (an unset variable?): name a file, or leave it out")
    path = Path(output)
    try:
        require_replaceable(path, fail=RolekitError)
    except RolekitError as exc:
        raise RolekitError(f"--output {exc}; to write to stdout, leave out --output") from None
    return path


def cmd_creds(args: argparse.Namespace, out: _Output) -> int:
    output = _output_file(args.output)
    found = command.creds(
        args.config,
        args.family,
        _context(args),
        host=args.host,
        port=args.port,
        dbname=args.dbname,
        verifiers=args.format == "pgbouncer",
    )
    # a file gets the JSON document unless told otherwise: never the terminal form
    fmt = args.format or ("json" if args.json or output is not None else None)
    if fmt is None:  # a person at a terminal
        password = found.password.reveal()
        out.emit({}, f"user={found.user}\npassword={password}")
        return ExitCode.OK
    text = found.render(fmt)
    if output is None:
        sys.stdout.write(text)
        return ExitCode.OK
    atomic_write(output, text.encode(), mode=0o600, fail=RolekitError)
    message = (
        f"wrote the {fmt} credentials of {found.family} ({found.context}) to {args.output} (0600)"
    )
    if args.json:
        sys.stdout.write(json.dumps({"output": args.output, "format": fmt}) + "\n")
    else:
        sys.stderr.write(message + "\n")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace, out: _Output) -> int:
    fmt = status_text.output_format(args.json, args.format)
    args.json = fmt == "json"  # an error is a JSON document too
    output = _output_file(args.output)
    result = command.status(args.config, _raw_context(args) or None, max_age=args.max_age)
    text = status_text.document(result, fmt)
    if output is None:
        sys.stdout.write(text)
    else:  # no secret in it; a collector running as another user reads it
        atomic_write(output, text.encode(), mode=0o644, fail=RolekitError, keep_suffix=False)
    return ExitCode.PROBLEM if result.problems else ExitCode.OK


def cmd_check(args: argparse.Namespace, out: _Output) -> int:
    problems = command.check(args.config, _raw_context(args) or None, max_age=args.max_age)
    out.emit({"ok": not problems, "problems": problems}, "\n".join(problems) or "no drift")
    return ExitCode.PROBLEM if problems else ExitCode.OK


def cmd_gen_password(args: argparse.Namespace, out: _Output) -> int:
    made = command.gen_password(
        args.config, args.role, _context(args), length=args.length, write=args.write
    )
    shown = made.password.reveal() if args.show or not args.write else None
    text = (
        f"wrote a new password for {made.role} ({made.context}) to {made.written_to}"
        if args.write
        else ""
    )
    if made.new_context:
        text += f"\nnote: context {made.context!r} is new in this project"
    if shown:
        text = (text + "\n" if text else "") + shown
    out.emit(
        {
            "role": made.role,
            "context": made.context,
            "written_to": str(made.written_to) if made.written_to else None,
            "new_context": made.new_context,
            "password": shown,
        },
        text,
    )
    return ExitCode.OK


def cmd_clear_checksums(args: argparse.Namespace, out: _Output) -> int:
    cleared = command.clear_checksums(args.config, args.ids)
    out.emit(
        {"cleared": cleared},
        f"cleared the checksum of {', '.join(cleared)}; the next upgrade runs them again",
    )
    return ExitCode.OK


def cmd_init(args: argparse.Namespace, out: _Output) -> int:
    report = command.init(
        args.config,
        family=args.family,
        members=init_args.split(args.members),
        contexts=init_args.split(args.contexts),
        force=args.force,
        dry_run=args.dry_run,
    )
    out.emit(init_args.to_json(report, args.dry_run), init_args.render(report, args.dry_run))
    return int(report.exit_code)


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
        "4 wrong rotation phase or another run holds the lock, 5 database unreachable, "
        "143 interrupted\n\nexample:\n  " + _EXAMPLES["rotate"],
    )
    parser.add_argument("--version", action="version", version=f"rolekit {rolekit.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help: str, fn: Command, description: str = "", *, contexts: bool = True
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=help,
            description=f"{help}.\n\n{description}".strip(),
            parents=[common, ctx] if contexts else [common],
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
        "  nothing has used the old member for the quiet period -- no session on the\n"
        "  primary or a configured replica, no PgBouncer client, no tracked login --\n"
        "  showing who is left, then disables it and waits for the replicas to replay it.\n"
        "Without --apply only the files change: commit them and let the deploy run\n"
        "'alembic -x context=C upgrade head' (GitOps). With --apply the state file changes\n"
        "only once the database committed; an interrupted run is completed by re-running it.\n"
        + rotate_args.AUTO_HELP,
    )
    p.add_argument("family", nargs="?", help="the group role, e.g. my_app (none with --all)")
    p.add_argument("phase", nargs="?", choices=["begin", "finish", "auto"])
    p.add_argument(
        "--apply",
        action="store_true",
        help="also upgrade now: the pending revisions and this family's repeatables "
        "(the others wait for the deploy's 'alembic upgrade head')",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="finish: seconds to wait for the old member to drain, quiet period included "
        f"(default {DEFAULT_DRAIN_TIMEOUT:g}, or [rolekit] drain_timeout); when it runs out "
        "nothing is changed (exit 3)",
    )
    p.add_argument(
        "--quiet-period",
        type=float,
        metavar="S",
        help="finish: seconds the old member must go unseen everywhere before it is disabled "
        f"(default {DEFAULT_DRAIN_QUIET_PERIOD:g}, or [rolekit] drain_quiet_period): a client "
        "that connects now and then is still a user",
    )
    p.add_argument(
        "--terminate",
        action="store_true",
        help="finish: after the timeout, disable the old member, then end its sessions",
    )
    rotate_args.add_auto_arguments(p)
    p = add(
        "creds",
        "print the credentials applications should use now",
        cmd_creds,
        creds_formats.HELP,
    )
    p.add_argument("family")
    p.add_argument("--format", choices=creds_formats.FORMATS, help="output format (see above)")
    p.add_argument("--output", metavar="FILE", help="write to FILE (atomic, mode 0600)")
    p.add_argument("--host", help="database host for pgpass/url (default: the project's URL)")
    p.add_argument("--port", type=int, help="database port for pgpass/url")
    p.add_argument("--dbname", help="database name for pgpass/url")
    max_age_help = (
        "the rotation policy (90d, 12h, 30m; default [rolekit] max_age): the password apps "
        "use is due once rolekit set it longer ago, or when it has no record of setting it"
    )
    p = add(
        "status",
        "members, logins, sessions, password age and expiry, membership options, last runs",
        cmd_status,
        status_text.FORMAT_HELP,
    )
    p.add_argument("--max-age", metavar="AGE", help=max_age_help + "; status shows 'due in'")
    p.add_argument(
        "--format", choices=status_text.FORMATS, help="output format (default: text; see above)"
    )
    p.add_argument(
        "--output", metavar="FILE", help="write to FILE instead of stdout (atomic, mode 0644)"
    )
    add(
        "check",
        "compare the catalog with what the migrations declare; exit 1 on drift",
        cmd_check,
        "Reports exactly what the next 'alembic upgrade' would repair or refuse, and names\n"
        "the rolekit step to re-run when a rotation was interrupted after its commit.\n"
        "With --max-age it also exits 1 when a family's password is due: any monitor can\n"
        "alert on it (rolekit check --context prod --max-age 90d).",
    ).add_argument("--max-age", metavar="AGE", help=max_age_help)
    p = add(
        "gen-password",
        "generate a strong password, optionally into the secrets file",
        cmd_gen_password,
    )
    p.add_argument("role")
    p.add_argument("--write", action="store_true", help="store it under <role>.password.<context>")
    p.add_argument("--show", action="store_true", help="print it even with --write")
    p.add_argument(
        "--length", type=int, default=DEFAULT_PASSWORD_LENGTH, help="default: %(default)s"
    )
    p = add(
        "clear-checksums",
        "make the next upgrade run repeatables again, whatever their checksum",
        cmd_clear_checksums,
        "Like Liquibase's clear-checksums, for the repeatables you name; the history records\n"
        "it. For one run only, 'alembic -x rerun=ID upgrade head' does the same.",
    )
    p.add_argument("ids", nargs="+", metavar="ID", help="repeatable id(s)")
    p = add(
        "init",
        "add rolekit to an existing Alembic project",
        cmd_init,
        init_args.INIT_HELP,
        contexts=False,
    )
    init_args.add_init_arguments(p)
    _completion.add_command(sub, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = _Output(args.json)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return int(args.fn(args, out))
    except RolekitError as exc:
        if args.json:  # an "event" too, for log pipelines reading rotate auto's events
            error = {"ok": False, "event": "error", "error": str(exc)}
            print(json.dumps({**error, "exit_code": int(exc.exit_code)}))
        print(f"rolekit: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except (psycopg2.Error, sqlalchemy.exc.DBAPIError) as exc:
        print(f"rolekit: database error: {first_line(exc)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except Interrupted:
        print(
            "rolekit: interrupted by SIGTERM; an open transaction rolled back and no state file "
            "was written after it. 'rolekit check' tells whether to re-run the step",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
