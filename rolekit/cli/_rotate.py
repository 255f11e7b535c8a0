"""The command line of ``rolekit rotate FAMILY auto`` (its options and help)."""

from __future__ import annotations

import argparse
from typing import Final

from rolekit.errors import RolekitError
from rolekit.rotation.creds_formats import FORMATS

AUTO_HELP: Final = (
    "auto: one command for cron, a CI schedule or a Kubernetes CronJob, as often as you\n"
    "  like. Not due (--max-age, from when rolekit last set the password apps use): exit 0,\n"
    "  nothing changed. Due: begin, --publish the new credentials, wait for the old member\n"
    "  to drain (up to --move-timeout), finish. A run killed at any point is completed by\n"
    "  the next; two at once: the second exits 4. Apps that did not move: exit 3, still in\n"
    "  the overlap (no outage). A failed publish: exit 1, still in the overlap.\n"
    "  rolekit rotate my_app auto --context prod --apply --max-age 90d --move-timeout 900 \\\n"
    "    --publish 'kubectl apply --server-side --field-manager=rolekit -f -' \\\n"
    "    --publish-format k8s-secret --git-commit --git-push\n"
    "--all auto: every family with a state in the context, in one run: one begin for all\n"
    "  due families, one --publish run per family (its own credentials on stdin), one\n"
    "  shared wait in which each family drains on its own, finish per family as soon as\n"
    "  it drained; every --json event names its family. A family whose\n"
    "  apps did not move stays in the overlap (exit 3, named); the others finish.\n"
    "  rolekit rotate --all auto --context prod --apply --max-age 90d --json"
)


#: the options each phase takes (besides the family, --context, --apply and the
#: common ones); an option of another phase is refused, not silently dropped
PHASE_OPTIONS: Final = {
    "begin": (),
    "finish": ("drain_timeout", "quiet_period", "terminate"),
    "auto": (
        "all",
        "max_age",
        "publish",
        "publish_format",
        "publish_timeout",
        "move_timeout",
        "quiet_period",
        "git_commit",
        "git_push",
    ),
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_phase_options(args: argparse.Namespace) -> None:
    """Refuse (exit 2) options given for a phase that does not take them."""
    mine = set(PHASE_OPTIONS[args.phase])
    given = sorted(
        dest
        for options in PHASE_OPTIONS.values()
        for dest in options
        if dest not in mine and getattr(args, dest, None) not in (None, False)
    )
    if given:
        takes = ", ".join(_flag(d) for d in PHASE_OPTIONS[args.phase]) or "only --apply"
        others = ", ".join(
            f"{_flag(d)} ({'/'.join(p for p, o in PHASE_OPTIONS.items() if d in o)})"
            for d in dict.fromkeys(given)
        )
        raise RolekitError(
            f"rotate {args.phase} does not take {others}; {args.phase} takes {takes}. "
            "Nothing was done"
        )


def resolve_target(args: argparse.Namespace) -> None:
    """``rotate FAMILY PHASE`` or ``rotate --all PHASE``: set ``family`` and ``phase``, or
    refuse (exit 2) a command line naming neither or both."""
    if args.all and args.phase is None:
        args.family, args.phase = None, args.family
    if args.all and args.family is not None:
        raise RolekitError(
            f"rotate --all rotates every family; do not name one ({args.family}): "
            "rolekit rotate --all auto --context C --apply. Nothing was done"
        )
    if args.phase not in PHASE_OPTIONS:
        shown = "a family and a phase" if not args.all else "a phase (auto)"
        raise RolekitError(
            f"rotate needs {shown}: rolekit rotate my_app begin|finish|auto, or rolekit rotate "
            f"--all auto{f' (not {args.phase!r})' if args.phase else ''}. Nothing was done"
        )


def add_auto_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only ``auto`` takes."""
    parser.add_argument(
        "--all",
        action="store_true",
        help="auto: rotate every family that has a state in the context, in one run "
        "(rolekit rotate --all auto ...); name no family",
    )
    parser.add_argument(
        "--max-age",
        metavar="AGE",
        help="auto: rotate once the password apps use is older (90d, 12h; default "
        "[rolekit] max_age; 0: now)",
    )
    parser.add_argument(
        "--publish",
        metavar="CMD",
        help="auto: a shell command that gets the new credentials on its stdin (never in its "
        "arguments or environment), e.g. 'kubectl apply --server-side --field-manager=rolekit -f -'",
    )
    parser.add_argument(
        "--publish-format",
        choices=FORMATS,
        help="auto: the format of what --publish gets (those of 'rolekit creds --format'; "
        "default json)",
    )
    parser.add_argument(
        "--publish-timeout",
        type=float,
        metavar="S",
        help="auto: seconds --publish may run (default [rolekit] publish_timeout, else 300); "
        "past it, it is ended with every process it started, exit 1, still in the overlap",
    )
    parser.add_argument(
        "--move-timeout",
        type=float,
        metavar="S",
        help="auto: seconds to wait for the apps to leave the old member (the drain timeout of "
        "finish); past it, exit 3 and stay in the overlap: the next run carries on",
    )
    parser.add_argument(
        "--git-commit",
        action="store_true",
        help="auto: commit the state file and the secrets file (unless git ignores it) after "
        "each phase, with a message naming family, context and phase",
    )
    parser.add_argument(
        "--git-push",
        action="store_true",
        help="auto: also push after each commit, before anything is published (for a checkout "
        "that vanishes with its CI job or CronJob); refuses a secrets file git ignores, whose "
        "new password would be lost",
    )
