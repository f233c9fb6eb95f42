"""Operator commands of `dropgate-dev` (docs/operations.md):

    dropgate-dev history <upload-id>        the row, the audit trail, what storage holds now, the broker's deliveries
    dropgate-dev replay-dead-letters        re-post dead-lettered events to the broker (same ids: consumers dedupe)
    dropgate-dev rescan <upload-id>...      scan clean/unscannable files again (after a signature update), audited;
                                            --all-clean [--since T] [--owner S] [--limit N] for many
    dropgate-dev release <upload-id>        let an unscannable/rejected file be downloaded (--reason), audited
    dropgate-dev blocklist list|add|remove  the known-bad SHA-256 list; add quarantines stored files, audited
    dropgate-dev expire-now [--dry-run]     run the expire pass now (the dropgate-expire PingSource), or list
                                            what it would delete

Output: a table (or key/value lines) for people; `--json` prints the result as JSON for scripts.
Long commands (replay-dead-letters, rescan of many, expire-now --dry-run) show progress on stderr.
The commands live by concern: ops_history, ops_replay, ops_scan, ops_expire; what they connect to
in ops_target; how they print in output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dropgate_local.ops_expire import (
    EXPIRE_PINGSOURCE,
    expire_now,
    expire_preview,
    run_expire_now,
)
from dropgate_local.ops_history import format_history, run_history, upload_history
from dropgate_local.ops_replay import Replayed, replay_dead_letters, run_replay
from dropgate_local.ops_scan import (
    RESCAN_EVENT_SOURCE,
    RESCANNABLE,
    rescan,
    rescan_many,
    run_blocklist,
    run_release,
    run_rescan,
)
from dropgate_local.ops_target import (
    OPERATOR_SERVICE_ACCOUNT,
    OpsError,
    Target,
    operator_token_file,
)
from shared.platform.errors import ApiError

Command = Callable[[argparse.Namespace], int]


def _guarded(run: Command) -> Command:
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (OpsError, ApiError) as exc:  # ApiError: the shared checks' 4xx (bad hash, wrong state)
            print(f"dropgate-dev {args.command}: {exc}", file=sys.stderr)
            return 2
    return command


def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every operator command takes: where to connect, and --json."""
    parser.add_argument("--environ", action="store_true",
                        help="connect as the environment says (DATABASE_URL, DROPGATE_S3_*, K_SINK), "
                             "not to the local stack")
    parser.add_argument("--broker", help="the Broker's ingress URL (default: K_SINK)")
    parser.add_argument("--router", help="the local router's URL (default: the local stack's)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON (for scripts); default: a table for people")
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add the operator commands to `dropgate-dev`'s subcommands."""
    history = common(sub.add_parser("history", help="an upload's row, audit trail, storage state and deliveries"))
    history.add_argument("upload_id")
    history.set_defaults(run=_guarded(run_history))

    replay = common(sub.add_parser("replay-dead-letters", help="re-post dead-lettered events to the broker"))
    replay.add_argument("--file", type=Path, help="dead-letter file (default: the local stack's)")
    replay.add_argument("--id", action="append", default=[], help="replay only this event id (repeatable)")
    replay.add_argument("--dry-run", action="store_true", help="list, replay nothing")
    replay.set_defaults(run=_guarded(run_replay))

    release = common(sub.add_parser("release", help="let an unscannable or rejected file be downloaded (audited)"))
    release.add_argument("upload_id")
    release.add_argument("--reason", required=True, help="why; recorded in the audit log")
    release.add_argument("--operator", help="who decides (default: the login name); recorded in the audit log")
    release.set_defaults(run=_guarded(run_release))

    blocked = common(sub.add_parser("blocklist", help="known-bad SHA-256 values: list, add (quarantines stored "
                                                      "files with it), remove"))
    blocked.add_argument("action", choices=("list", "add", "remove"))
    blocked.add_argument("sha256", nargs="?", help="the whole file's SHA-256 (add, remove)")
    blocked.add_argument("--reason", help="why (add); recorded with the entry and in the audit log")
    blocked.add_argument("--operator", help="who decides (default: the login name); recorded in the audit log")
    blocked.set_defaults(run=_guarded(run_blocklist))

    _register_rescan(sub)
    _register_expire(sub)


def _register_rescan(sub: argparse._SubParsersAction) -> None:
    again = common(sub.add_parser("rescan", help="scan clean or unscannable files again, e.g. after a signature "
                                                 "update: the named ones, or --all-clean"))
    again.add_argument("upload_ids", nargs="*", metavar="upload_id")
    again.add_argument("--all-clean", action="store_true", help="every clean upload (narrow with --since, --owner, "
                       "--limit); each is not downloadable until its new verdict")
    again.add_argument("--since", metavar="TIME", help="with --all-clean: created at or after this ISO 8601 time")
    again.add_argument("--owner", help="with --all-clean: only this owner's uploads (the JWT subject)")
    again.add_argument("--limit", type=int, help="with --all-clean: at most this many, oldest first")
    again.add_argument("--reason", default="signature update", help="recorded in the audit log")
    again.add_argument("--operator", help="who asks (default: the login name); recorded in the audit log")
    again.set_defaults(run=_guarded(run_rescan))


def _register_expire(sub: argparse._SubParsersAction) -> None:
    expire = common(sub.add_parser("expire-now", help="run the expire pass now (fires the dropgate-expire "
                                                      "PingSource), or --dry-run: list what it would delete"))
    expire.add_argument("--namespace", default="dropgate", help="the PingSource's namespace (broker mode)")
    expire.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help="local router: wait up to this long for the delivery's outcome")
    expire.add_argument("--dry-run", action="store_true", help="list what the pass would delete; change nothing "
                        "(connects to the database and storage, not the broker)")
    expire.add_argument("--at", metavar="TIME", help="with --dry-run: as if the pass ran at this ISO 8601 time")
    expire.set_defaults(run=_guarded(run_expire_now))


__all__ = ["EXPIRE_PINGSOURCE", "OPERATOR_SERVICE_ACCOUNT", "RESCANNABLE", "RESCAN_EVENT_SOURCE", "OpsError",
           "Replayed", "Target", "common", "expire_now", "expire_preview", "format_history", "operator_token_file",
           "register", "replay_dead_letters", "rescan", "rescan_many", "upload_history"]
