"""``./manage.py poolstats``: every pooled process on this host, and the database's view."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import snapshots
from ...checks import pooled_aliases
from ...serverview import server_view

COLUMNS = (
    ("pid", 8),
    ("alias", 10),
    ("size", 5),
    ("in use", 7),
    ("idle", 5),
    ("waiting", 8),
    ("max", 5),
    ("checkouts/s", 12),
    ("timeouts", 9),
    ("wait p99", 9),
    ("leaks", 6),
)
# The leases: LEASE, connections parked between two leases now, leases (checkouts) per
# second, how long they lasted and how many were pinned; the pins by reason follow, unpadded.
LEASE_COLUMNS = (
    ("pid", 8),
    ("alias", 10),
    ("lease", 12),
    ("parked", 7),
    ("leases/s", 9),
    ("hold mean", 10),
    ("hold p99", 9),
    ("pinned", 7),
)


class Command(BaseCommand):
    help = (
        "Show the connection pools of every process on this host that uses a pooled ENGINE "
        "(they publish their stats to DBPOOL_STATS_DIR), and with --server the database's "
        "own view of its connections."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON for machines")
        parser.add_argument(
            "--watch",
            nargs="?",
            type=float,
            const=2.0,
            metavar="SECONDS",
            help="redraw every SECONDS (default 2) until Ctrl-C",
        )
        parser.add_argument(
            "--server",
            action="store_true",
            help="add the database's view: connections by tag and state, and headroom",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # This command's own connections (for --server) are not a process worth listing.
        snapshots.disable_publishing()
        if options["watch"]:
            if options["watch"] <= 0:
                raise CommandError("--watch takes a number of seconds > 0.")
            try:
                while True:
                    report = self._report(options["server"], require=False)
                    self.stdout.write("\x1b[2J\x1b[H" + self._render(report, options["json"]))
                    time.sleep(options["watch"])
            except KeyboardInterrupt:
                return
        report = self._report(options["server"], require=True)
        self.stdout.write(self._render(report, options["json"]))

    def _report(self, server: bool, require: bool) -> dict[str, Any]:
        directory = snapshots.stats_dir()
        # A directory others could write to is not read: its refusal is the answer (and
        # stays on screen under --watch, where a logged warning would scroll away).
        refused = snapshots.check_stats_dir(directory)
        processes = [] if refused else snapshots.read_snapshots(directory)
        if require and refused and not server:
            raise CommandError(refused)
        if require and not processes and not server:
            raise CommandError(
                f"No process publishes pool stats in {directory}.\n"
                "Processes publish there once they open a connection through a pooled ENGINE "
                "(django_dbpool.backends.postgresql or .mysql) with DBPOOL_STATS_INTERVAL > 0 "
                "(default 1 s). Run this command with the same settings as the application "
                "(the same DBPOOL_STATS_DIR), on the same host; or use --server for the "
                "database's own view."
            )
        report: dict[str, Any] = {
            "directory": str(directory),
            "processes": processes,
            "totals": snapshots.totals(processes),
        }
        if refused:
            report["refused"] = refused
        if server:
            report["server"] = {alias: server_view(alias) for alias in pooled_aliases()}
        return report

    def _render(self, report: dict[str, Any], as_json: bool) -> str:
        if as_json:
            return json.dumps(report, indent=2, default=str) + "\n"
        lines = [f"Pool stats from {_printable(report['directory'])}", ""]
        lines.append(_row(_names(COLUMNS)))
        for process in report["processes"]:
            for alias, entry in process["pools"].items():
                gauges = entry["stats"]["gauges"]
                counters = entry["stats"]["counters"]
                values = (
                    process["pid"],
                    alias,
                    gauges["size"],
                    gauges["in_use"],
                    gauges["idle"],
                    gauges["waiting"],
                    gauges["max_size"],
                    f"{entry.get('checkouts_per_second', 0.0):.1f}",
                    counters["timeouts"],
                    _milliseconds(entry.get("wait_p99_seconds")),
                    counters["leaks"],
                )
                lines.append(_row(values))
        if "refused" in report:
            lines.append(_printable(report["refused"]))
        elif not report["processes"]:
            lines.append("(no publishing process)")
        lines += ["", "Totals per alias"]
        for alias, total in report["totals"].items():
            gauges, counters = total["gauges"], total["counters"]
            values = (
                f"{total['processes']} proc",
                alias,
                gauges.get("size", 0),
                gauges.get("in_use", 0),
                gauges.get("idle", 0),
                gauges.get("waiting", 0),
                gauges.get("max_size", 0),
                f"{total['checkouts_per_second']:.1f}",
                counters.get("timeouts", 0),
                "",
                counters.get("leaks", 0),
            )
            lines.append(_row(values))
        if report["processes"]:
            lines += ["", "Leases per process, and totals per alias", *_lease_rows(report)]
        for alias, view in report.get("server", {}).items():
            lines += [
                "",
                f"Server view of {alias!r} ({view['vendor']}): max_connections "
                f"{view['max_connections']}, reserved {view['reserved']}, in use "
                f"{view['in_use']}, headroom {view['headroom']}",
                f"{'connections':>12}  {'state':<22}{'oldest txn':>11}  tag",
            ]
            for group in view["groups"]:
                age = group["oldest_transaction_seconds"]
                lines.append(
                    f"{group['connections']:>12}  {_printable(group['state']):<22}"
                    f"{'' if age is None else f'{age:.0f}s':>11}  {_printable(group['tag'])}"
                )
        return "\n".join(lines) + "\n"


def _row(values: tuple[Any, ...], columns: tuple[tuple[str, int], ...] = COLUMNS) -> str:
    cells = zip(values, columns, strict=True)
    return "".join(_printable(value).rjust(width) for value, (_, width) in cells)


def _lease_rows(report: dict[str, Any]) -> list[str]:
    rows = [_row(_names(LEASE_COLUMNS), LEASE_COLUMNS) + "  pins"]
    for process in report["processes"]:
        for alias, entry in process["pools"].items():
            counters = entry["stats"]["counters"]
            values = (
                process["pid"],
                alias,
                entry["lease"],
                entry["stats"]["gauges"]["parked"],
                f"{entry['checkouts_per_second']:.1f}",
                _milliseconds(_mean(entry["stats"]["histograms"]["hold_seconds"])),
                _milliseconds(entry["hold_p99_seconds"]),
                counters["pinned"],
            )
            rows.append(_row(values, LEASE_COLUMNS) + _pins(counters["pins"]))
    for alias, total in report["totals"].items():
        values = (
            f"{total['processes']} proc",
            alias,
            total["lease"],
            total["gauges"]["parked"],
            f"{total['checkouts_per_second']:.1f}",
            _milliseconds(_mean(total["histograms"]["hold_seconds"])),
            "",
            total["counters"]["pinned"],
        )
        rows.append(_row(values, LEASE_COLUMNS) + _pins(total["counters"]["pins"]))
    return rows


def _names(columns: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(name for name, _ in columns)


def _mean(histogram: dict[str, Any]) -> float | None:
    return histogram["sum"] / histogram["count"] if histogram["count"] else None


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _pins(pins: dict[str, int]) -> str:
    # Only the reasons that held a lease: most are 0 for most applications.
    held = [f"{reason} {count}" for reason, count in pins.items() if count]
    return "  " + (", ".join(held) if held else "-")


def _printable(value: object) -> str:
    # Aliases come from files in the stats directory, connection tags from any client of
    # the database: shown escaped (\x1b), a control character cannot move the cursor,
    # retitle the terminal or hide a row. (--json escapes them already.)
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
