"""The command line of ``rolekit init``: its options, its help and its report."""

from __future__ import annotations

import argparse
import os
from typing import Any, Final

from rolekit.scaffold import DEFAULT_CONTEXTS, Action, FileChange, InitReport

INIT_HELP: Final = (
    "Run it in the folder of alembic.ini (or name it with -c). It adds:\n"
    "  env.py's two lines (Alembic's untouched template is replaced by rolekit's env.py;\n"
    "    for a customised one the change is printed, as a diff --force applies, or as the\n"
    "    lines to add and where when rolekit cannot edit it safely; then it exits 1),\n"
    "  [rolekit] in alembic.ini, the repeatables folder, an empty rotation.json,\n"
    "  passwords.env and rolekit's lock files in .gitignore, passwords.env.example.\n"
    "--family NAME --members A,B also writes a first revision (op.create_role_family and\n"
    "  its downgrade), the family's repeatables (SetPasswords per context, FamilyLogin)\n"
    "  and its rotation state (A logs in first).\n"
    "A second run changes nothing and says so. A file rolekit would replace stops the run\n"
    "before any write (exit 3) and is shown as a diff; --force replaces it. A file reached\n"
    "through a symlink that leads outside the project is never written, even with --force\n"
    "(exit 3, naming the link). It never connects to a database and never writes a password."
)

_VERBS = {
    Action.CREATE: "create",
    Action.EDIT: "edit",
    Action.UNCHANGED: "ok",
    Action.CONFLICT: "CONFLICT",
    Action.MANUAL: "BY HAND",
}


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", metavar="NAME", help="the group role of a family to declare")
    parser.add_argument(
        "--members",
        metavar="A,B",
        default="",
        help="the family's two member roles (A logs in first)",
    )
    parser.add_argument(
        "--contexts",
        metavar="C1,C2",
        default="",
        help="the contexts to declare passwords and login state for (default: "
        f"{','.join(DEFAULT_CONTEXTS)})",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace files that exist with other content"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show every change as a diff; write nothing"
    )


def split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _verb(change: FileChange, report: InitReport) -> str:
    verb = "replace" if change.forced else _VERBS[change.action]
    return f"would {verb}" if change.writes and not report.applied else verb


def to_json(report: InitReport, dry_run: bool) -> dict[str, Any]:
    return {
        "root": str(report.root),
        "applied": report.applied,
        "dry_run": dry_run,
        "changed": bool(report.written),
        "files": [
            {
                "path": os.path.relpath(c.path, report.root),
                "action": c.action.value,
                "forced": c.forced,
                "note": c.note,
                "diff": c.diff(report.root) if c.action is not Action.UNCHANGED else "",
            }
            for c in report.changes
        ],
        "warnings": report.warnings,
        "next": report.next_steps,
        "exit_code": int(report.exit_code),
    }


def render(report: InitReport, dry_run: bool) -> str:
    """The report for a person: one line per file, the diffs that need a decision, what next."""
    manual = report.manual
    rows = [
        f"  {_verb(c, report):<15} {os.path.relpath(c.path, report.root):<44} "
        + ("(below)" if c in manual else c.note)
        for c in report.changes
    ]
    lines = [f"rolekit init in {report.root}", *rows]
    show = [c for c in report.changes if c.waits_for_user or (dry_run and c.writes)]
    lines += [c.diff(report.root).rstrip("\n") for c in show if c.after is not None]
    lines += [f"{os.path.relpath(c.path, report.root)} {c.note}" for c in manual]
    lines += [f"warning: {w}" for w in report.warnings]
    if report.conflicts:
        lines.append(
            f"nothing written: {len(report.conflicts)} file(s) exist with other content (diffs "
            "above); re-run with --force to replace them, or make the change by hand"
        )
        return "\n".join(lines)
    if dry_run:
        lines.append("dry run: nothing written")
    elif not report.written:
        lines.append(
            "nothing to change; env.py still needs the lines above"
            if report.manual
            else "nothing to change: the project already has what rolekit needs"
        )
    else:
        lines.append(f"wrote {len(report.written)} file(s)")
    if report.next_steps and (report.written or dry_run or report.manual):
        lines += ["next:", *(f"  {step}" for step in report.next_steps)]
    return "\n".join(lines)
