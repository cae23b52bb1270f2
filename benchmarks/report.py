"""The benchmark report: ``results/report.md``, ``results/web.png`` and the README's section.

Reads what ``django_cycle.py``, ``request_cpu.py``, ``web.py`` and ``pool_cycle.py`` wrote
(``results/*.json``), takes medians over rounds (spread: the lowest and highest round),
checks the targets, and writes

- ``results/report.md``: every table, and each target with PASS or MISS;
- ``results/web.png``: requests per second by contender and concurrency;
- the part of ``README.rst`` between ``.. benchmark-report-start`` and ``-end``, the
  pool's own overhead (``pool_cycle.py``, ``results/pool_cycle.json``) between
  ``.. pool-cycle-start`` and ``-end``, and transaction leases (``leases.py``,
  ``results/leases.json``, rendered by ``leases_report.py``) between
  ``.. leases-report-start`` and ``-end``.

``python benchmarks/report.py --check`` only compares the README with the committed results
and fails if they differ (the test suite runs it): the README's numbers are never typed.
``--no-chart`` leaves ``web.png`` as it is (``make bench-leases``, which measures nothing it
shows).
"""

from __future__ import annotations

import json
import operator
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.rst"
START = ".. benchmark-report-start"
END = ".. benchmark-report-end"
POOL_START = ".. pool-cycle-start"
POOL_END = ".. pool-cycle-end"
LEASES_START = ".. leases-report-start"
LEASES_END = ".. leases-report-end"

VENDORS = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
NAMES = {
    "connect": "connect per request",
    "persistent": "persistent (CONN_MAX_AGE=None)",
    "persistent_aa": "persistent again, a second identical site (A/A)",
    "native": "Django's native pool",
    "dbcp": "django-db-connection-pool",
    "dbpool": "django_dbpool",
    "dbpool_threads": "django_dbpool, MAX_SIZE 8 = threads (diagnostic)",
    "bound": "persistent, 4 threads at a time, no pool (diagnostic)",
}
WORKERS = 2
#: One colour per contender, the same in every chart.
COLOURS = {
    "connect": "tab:gray",
    "persistent": "tab:orange",
    "persistent_aa": "tab:brown",
    "native": "tab:green",
    "dbcp": "tab:red",
    "dbpool": "tab:blue",
    "dbpool_threads": "tab:cyan",
    "bound": "tab:purple",
}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "---|" * len(self.headers))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def rst(self) -> str:
        lines = [f".. list-table:: {self.title}", "   :header-rows: 1", ""]
        for row in [self.headers, *self.rows]:
            lines.append("   * - " + (row[0] or r"\ "))
            lines += ["     - " + (cell or r"\ ") for cell in row[1:]]
        return "\n".join(lines) + "\n"


@dataclass
class Target:
    text: str
    passed: bool
    measured: str


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def by(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [row for row in rows if all(row[key] == value for key, value in match.items())]


def contenders_of(rows: list[dict[str, Any]]) -> list[str]:
    """The contenders in ``rows``, in the order of :data:`NAMES` (the order tables and
    charts show them in; the order they ran in is ``web.py``'s)."""
    present = {row["contender"] for row in rows}
    return [name for name in NAMES if name in present]


def balanced(web: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose throughput counts: both gunicorn workers served. A measurement still
    unbalanced after every attempt (see ``web.py``) measured one worker, whatever the
    contender; it is kept for errors, connections, statements and reuse only."""
    floor = web["environment"].get("min_worker_share", 0.0)
    return [row for row in rows if row.get("worker_share", 1.0) >= floor]


def cpu_measured(web: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The balanced rows that recorded CPU time over HTTP (runs before web.py read /proc
    did not)."""
    return [row for row in balanced(web, rows) if "machine_cpu_us" in row]


def paired(
    rows: list[dict[str, Any]],
    a: str,
    b: str,
    key: str,
    combine: Callable[[float, float], float],
) -> list[float]:
    """``combine(a's key, b's key)``, round by round (the runs of one round ran side by
    side), for the rounds in which both are in ``rows``."""
    values = []
    for rnd in sorted({row["round"] for row in rows}):
        ra = by(rows, contender=a, round=rnd)
        rb = by(rows, contender=b, round=rnd)
        if ra and rb:
            values.append(combine(ra[0][key], rb[0][key]))
    return values


def paired_ratios(rows: list[dict[str, Any]], a: str, b: str, concurrency: int) -> list[float]:
    """``a``'s rps over ``b``'s, round by round, at ``concurrency`` clients."""
    return paired(by(rows, concurrency=concurrency), a, b, "rps", operator.truediv)


def spread_or_none(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return spread(values, fmt) if values else "n/a"


def web_tables(web: dict[str, Any]) -> list[Table]:
    tables = []
    for vendor, data in web["databases"].items():
        rows = data["rows"]
        timed = balanced(web, rows)
        contenders = contenders_of(rows)
        table_rows = []
        for concurrency in sorted({row["concurrency"] for row in rows}):
            for contender in contenders:
                cell = by(rows, contender=contender, concurrency=concurrency)
                fast = by(timed, contender=contender, concurrency=concurrency)
                vs_persistent = paired_ratios(timed, contender, "persistent", concurrency)
                ours = (
                    ""
                    if contender == "dbpool"
                    else spread_or_none(
                        paired_ratios(timed, "dbpool", contender, concurrency), "{:.2f}x"
                    )
                )
                table_rows.append(
                    [
                        str(concurrency),
                        NAMES[contender],
                        spread_or_none([r["rps"] for r in fast]),
                        f"{median([r['p50_ms'] for r in fast]):.1f}" if fast else "n/a",
                        f"{median([r['p99_ms'] for r in fast]):.1f}" if fast else "n/a",
                        str(sum(r["errors"] for r in cell)),
                        str(max(r["peak_connections"] for r in cell)),
                        f"{max(r['statements_per_request'] for r in cell):.3f}",
                        f"{min(r['reuse'] for r in cell) * 100:.2f} %",
                        f"{median(vs_persistent):.2f}x" if vs_persistent else "n/a",
                        ours,
                    ]
                )
        tables.append(
            Table(
                f"{VENDORS[vendor]} ({data['server']}): one indexed SELECT per request",
                [
                    "clients",
                    "contender",
                    "requests/s (min-max)",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "peak server conns",
                    "statements/request",
                    "reuse (lowest)",
                    "vs persistent",
                    "django_dbpool vs it",
                ],
                table_rows,
            )
        )
    return tables


def web_cpu_table(web: dict[str, Any]) -> Table | None:
    """Where the machine's CPU time went during the HTTP measurements: per request, the
    gunicorn workers' and the whole machine's (workers, database server, wrk), and the
    shares left idle and taken by the host. None for a run that did not record them."""
    table_rows = []
    for vendor, data in web["databases"].items():
        timed = cpu_measured(web, data["rows"])
        contenders = contenders_of(timed)
        for concurrency in sorted({row["concurrency"] for row in timed}):
            at = by(timed, concurrency=concurrency)
            for contender in contenders:
                cell = by(at, contender=contender)
                if not cell:
                    continue
                ratio = paired(at, contender, "persistent", "machine_cpu_us", operator.truediv)
                table_rows.append(
                    [
                        VENDORS[vendor],
                        str(concurrency),
                        NAMES[contender],
                        spread([r["machine_cpu_us"] for r in cell]),
                        spread([r["workers_cpu_us"] for r in cell]),
                        f"{median([r['workers_switches'] for r in cell]):.1f}",
                        f"{median([r['idle_share'] for r in cell]):.1%}",
                        f"{median([r['steal_share'] for r in cell]):.1%}",
                        spread(ratio, "{:.2f}x") if contender != "persistent" and ratio else "",
                    ]
                )
    if not table_rows:
        return None
    return Table(
        "CPU time per request over HTTP, during the same measurements",
        [
            "database",
            "clients",
            "contender",
            "µs machine CPU per request (min-max)",
            "µs gunicorn workers' CPU per request (min-max)",
            "workers' context switches per request",
            "machine idle",
            "stolen by the host",
            "machine CPU vs persistent, same round (min-max)",
        ],
        table_rows,
    )


@dataclass
class LevelRatios:
    """One contender's requests/s over another's, round by round, at each concurrency."""

    medians: list[float]  # each concurrency's median
    rounds: list[float]  # every single round's ratio, all concurrencies

    def text(self) -> str:
        return " / ".join(f"{m:.2f}x" for m in self.medians)

    def range(self) -> str:
        return f"single rounds {min(self.rounds):.2f}x-{max(self.rounds):.2f}x"


def level_ratios(
    timed: list[dict[str, Any]], a: str, b: str, concurrencies: list[int]
) -> LevelRatios | None:
    """``a`` over ``b`` at each of ``concurrencies``; None when some concurrency has no
    balanced pair of runs."""
    per_level = [paired_ratios(timed, a, b, c) for c in concurrencies]
    if not all(per_level):
        return None
    return LevelRatios(
        [median(ratios) for ratios in per_level],
        [ratio for ratios in per_level for ratio in ratios],
    )


def aa_comparison(
    aa: LevelRatios | None, concurrencies: list[int], medians: list[float], floor: float
) -> str:
    """The A/A pair beside a throughput target: a second persistent site over the first
    (``aa``, None for a run without that site); and, where the target's median misses
    ``floor``, whether the shortfall is larger than the A/A median's distance from 1 there,
    which is what two identical sites came apart by."""
    if aa is None:
        return ""
    text = (
        f"; A/A, a second persistent site over the first, same rounds: {aa.text()} ({aa.range()})"
    )
    misses = []
    for concurrency, ours, same in zip(concurrencies, medians, aa.medians, strict=True):
        if ours >= floor:
            continue
        short, apart = floor - ours, abs(same - 1)
        verdict = "no more than" if short <= apart else "more than"
        misses.append(
            f"at {concurrency} clients short by {short:.2f}, {verdict} the A/A pair's "
            f"{apart:.2f} from 1"
        )
    if misses:
        text += "; " + ", ".join(misses)
    return text


def cpu_breakdown(rows: list[dict[str, Any]]) -> str:
    """What django_dbpool adds to the CPU time of a request over persistent connections
    without HTTP (``request_cpu.py``), set beside its two diagnostics: django_dbpool with a
    connection for every thread (the checkout and the return, no thread ever waiting) and
    persistent connections with at most the pool size of threads using theirs at a time (the
    wait for one of them, nothing checked out). Empty for a run without the diagnostics."""
    added = {
        contender: paired(rows, contender, "persistent", "cpu_us", operator.sub)
        for contender in ("dbpool", "dbpool_threads", "bound")
    }
    if not all(added.values()):
        return ""
    return (
        "; without HTTP, µs of CPU per request over persistent, same round, median: "
        f"django_dbpool {median(added['dbpool']):+,.0f}; django_dbpool with a connection "
        f"for every thread, no thread waiting {median(added['dbpool_threads']):+,.0f}; "
        "persistent connections used by at most as many threads at a time as the pool "
        f"has connections, no pool {median(added['bound']):+,.0f}"
    )


def diagnostics_over_http(
    timed: list[dict[str, Any]], concurrencies: list[int], floor: float
) -> str:
    """The two diagnostic sites over persistent connections in the same HTTP rounds, beside
    the target against persistent connections: django_dbpool with a connection for every
    thread (the checkout, no wait) and persistent connections used by at most the pool size
    of threads at a time (the wait, no pool). Where the second falls short of ``floor``, the
    bound alone, with no pool code at all, misses the target. Empty for a run without the
    diagnostics."""
    threads = level_ratios(timed, "dbpool_threads", "persistent", concurrencies)
    bound = level_ratios(timed, "bound", "persistent", concurrencies)
    if threads is None or bound is None:
        return ""
    text = (
        f"; the diagnostic rows over persistent, same rounds: {NAMES['dbpool_threads']} "
        f"{threads.text()}; {NAMES['bound']} {bound.text()}"
    )
    short = [
        str(concurrency)
        for concurrency, ratio in zip(concurrencies, bound.medians, strict=True)
        if ratio < floor
    ]
    if short:
        text += (
            f", below {floor:g}x at {' and '.join(short)} clients: with no pool at all, the "
            "bound on threads at a time misses the target there too"
        )
    return text


def web_targets(web: dict[str, Any], cpu: dict[str, Any] | None) -> list[Target]:
    targets = []
    for vendor, data in web["databases"].items():
        rows = data["rows"]
        timed = balanced(web, rows)
        name = VENDORS[vendor]
        concurrencies = sorted({row["concurrency"] for row in rows})
        ours = by(rows, contender="dbpool")
        cpu_rows = cpu["databases"].get(vendor, {}).get("rows", []) if cpu else []
        aa = level_ratios(timed, "persistent_aa", "persistent", concurrencies)

        def ratio_target(
            other: str,
            floor: float,
            label: str,
            timed: list[dict[str, Any]] = timed,
            name: str = name,
            concurrencies: list[int] = concurrencies,
            cpu_rows: list[dict[str, Any]] = cpu_rows,
            aa: LevelRatios | None = aa,
        ) -> Target:
            ours = level_ratios(timed, "dbpool", other, concurrencies)
            text = f"{name}: throughput at least {floor:g}x {label} at every concurrency"
            if ours is None:
                return Target(text, False, "no balanced pair of runs at some concurrency")
            worst = min(ours.medians)
            # Every level's median, and the single rounds' range: how far one round can
            # stray from the median tells whether a miss is larger than the noise.
            measured = (
                f"median ratio {ours.text()} at "
                f"{' / '.join(str(c) for c in concurrencies)} clients (lowest {worst:.3f}x); "
                f"{ours.range()}"
            )
            measured += aa_comparison(aa, concurrencies, ours.medians, floor)
            # The same comparison in CPU time per request without HTTP: theirs over ours, so
            # that, like the throughput ratio, above 1 is in django_dbpool's favour.
            by_cpu = paired(cpu_rows, other, "dbpool", "cpu_us", operator.truediv)
            if by_cpu:
                measured += (
                    f"; CPU per request without HTTP, theirs over ours: {median(by_cpu):.2f}x"
                )
            if other == "persistent":
                measured += diagnostics_over_http(timed, concurrencies, floor)
                measured += cpu_breakdown(cpu_rows)
            return Target(text, worst >= floor, measured)

        targets.append(ratio_target("persistent", 0.97, "persistent connections"))
        if by(rows, contender="native"):
            targets.append(ratio_target("native", 1.0, "Django's native pool"))
        if vendor == "mysql" and by(rows, contender="dbcp"):
            targets.append(ratio_target("dbcp", 1.3, "django-db-connection-pool"))
        worst_statements = max(row["statements_per_request"] for row in ours)
        targets.append(
            Target(
                f"{name}: exactly 1.0 statements per request",
                all(abs(row["statements_per_request"] - 1) < 1e-9 for row in ours),
                f"highest {worst_statements:.4f}",
            )
        )
        bound = WORKERS * web["environment"]["pool_size"]
        peak = max(row["peak_connections"] for row in ours)
        targets.append(
            Target(
                f"{name}: peak server connections at most {WORKERS} workers x MAX_SIZE = {bound}",
                peak <= bound,
                f"peak {peak}",
            )
        )
        top = max(concurrencies)
        errors = sum(row["errors"] for row in by(ours, concurrency=top))
        targets.append(
            Target(f"{name}: zero errors at {top} clients", errors == 0, f"{errors} errors")
        )
        reuse = min(row["reuse"] for row in ours)
        targets.append(
            Target(f"{name}: reuse rate at least 99.9 %", reuse >= 0.999, f"lowest {reuse:.4%}")
        )
    return targets


def cycle_table(cycle: dict[str, Any]) -> Table:
    rows = []
    for row in cycle["rows"].values():
        fair = [f for f in row["fairness"] if f is not None]
        rows.append(
            [
                VENDORS[row["vendor"]],
                NAMES[row["contender"]],
                spread([s * 1e6 for s in row["single_s"]], "{:.1f}"),
                spread(row["rate"]),
                f"{median(fair):.2f}" if fair else "a thread starved",
            ]
        )
    env = cycle["environment"]
    return Table(
        f"ensure_connection() + close() through each pooled ENGINE, pool of {env['pool_size']}",
        [
            "database",
            "ENGINE",
            "µs per cycle, 1 thread",
            f"cycles/s, {env['threads']} threads",
            "fairness max/min",
        ],
        rows,
    )


def cycle_targets(cycle: dict[str, Any]) -> list[Target]:
    rows = {(r["vendor"], r["contender"]): r for r in cycle["rows"].values()}
    targets = []
    ours, native = rows.get(("postgresql", "dbpool")), rows.get(("postgresql", "native"))
    if ours and native:
        ratio = median(ours["single_s"]) / median(native["single_s"])
        targets.append(
            Target(
                "Django-level cycle, 1 thread: at most 0.75x the time of Django's native pool",
                ratio <= 0.75,
                f"{ratio:.2f}x",
            )
        )
    for (vendor, contender), row in rows.items():
        if contender != "dbpool":
            continue
        fair = [f for f in row["fairness"] if f is not None]
        worst = max(fair) if len(fair) == len(row["fairness"]) else float("inf")
        targets.append(
            Target(
                f"{VENDORS[vendor]}: fairness max/min at most 1.10 with "
                f"{cycle['environment']['threads']} threads",
                worst <= 1.10,
                f"worst round {worst:.2f}",
            )
        )
    return targets


#: The pool's own cost per acquire + release, one thread, against psycopg_pool's (README,
#: Overhead).
POOL_OVERHEAD_TARGET = 0.6


def pool_overhead_target(data: dict[str, Any]) -> Target:
    """The single-threaded overhead target, judged on the ratio of medians the table shows;
    the per-run ratios (runs alternate, so each of ours has a neighbour of theirs) give its
    spread."""
    ours, theirs = data["rows"]["django_dbpool"], data["rows"]["psycopg_pool"]
    ratio = median(ours["single_s"]) / median(theirs["single_s"])
    runs = [a / b for a, b in zip(ours["single_s"], theirs["single_s"], strict=True)]
    return Target(
        f"Pool overhead, 1 thread: at most {POOL_OVERHEAD_TARGET}x psycopg_pool's time per "
        "acquire + release",
        ratio <= POOL_OVERHEAD_TARGET,
        f"{ratio:.2f}x (single runs {min(runs):.2f}x-{max(runs):.2f}x)",
    )


def pool_cycle_table(data: dict[str, Any]) -> Table:
    env, rows = data["environment"], data["rows"]
    ours = rows["django_dbpool"]
    table_rows = []
    for name, row in rows.items():
        # Time per cycle single-threaded (lower is better); throughput contended (higher is).
        compared = row is not ours
        single = (
            f"{median(ours['single_s']) / median(row['single_s']):.2f}x time" if compared else ""
        )
        rate = f"{median(ours['rate']) / median(row['rate']):.2f}x throughput" if compared else ""
        fair = [f for f in row["fairness"] if f is not None]
        table_rows.append(
            [
                name,
                spread([s * 1e6 for s in row["single_s"]], "{:.2f}"),
                single,
                spread(row["rate"]),
                rate,
                f"{median(fair):.2f}" if len(fair) == len(row["fairness"]) else "a thread starved",
            ]
        )
    return Table(
        f"Acquire + release of a no-op connection, Python {env['python']}, {env['cpus']} CPUs, "
        f"{env['date']}; medians of {env['rounds']} alternating runs (min-max)",
        [
            "pool",
            "µs per cycle, 1 thread",
            "django_dbpool vs it, 1 thread",
            f"cycles/s, {env['threads']} threads on {env['shared']} connections",
            f"django_dbpool vs it, {env['threads']} threads",
            "per-thread max/min",
        ],
        table_rows,
    )


def jitter_table(jitter: dict[str, Any]) -> Table:
    rows = jitter["rows"]
    mean, half = jitter["jitter_ms"]
    table_rows = []
    for contender in contenders_of(rows):
        cell = by(rows, contender=contender)
        counted = balanced(jitter, cell)
        table_rows.append(
            [
                NAMES[contender],
                spread([r["rps"] for r in counted]),
                f"{median([r['p50_ms'] for r in counted]):.1f}",
                f"{median([r['p99_ms'] for r in counted]):.1f}",
                str(sum(r["errors"] for r in cell)),
                # Connects of requests still in flight when wrk stopped are counted too:
                # connect per request can come out below 0.
                f"{max(0.0, min(r['reuse'] for r in cell)) * 100:.2f} %",
                f"{median([r['rss_mib'] for r in counted]):.1f}",
                f"{median([r['rss_growth_kib_per_1000'] for r in counted]):.1f}",
            ]
        )
    added = median([r["round_trip_added_ms"] for r in rows])
    return Table(
        f"PostgreSQL behind a proxy adding {mean:g} ms ± {half:g} ms each way "
        f"(measured: +{added:.1f} ms per round trip), 16 clients; each run measured once "
        "both workers have served (their pools open), unbalanced runs made again as above",
        [
            "contender",
            "requests/s (min-max)",
            "p50 ms",
            "p99 ms",
            "errors",
            "reuse (lowest)",
            "workers' RSS MiB",
            "RSS growth KiB per 1,000 requests",
        ],
        table_rows,
    )


def request_cpu_table(data: dict[str, Any]) -> Table:
    env = data["environment"]
    table_rows = []
    for vendor, results in data["databases"].items():
        rows = results["rows"]
        for contender in contenders_of(rows):
            cell = by(rows, contender=contender)
            added = paired(rows, contender, "persistent", "cpu_us", operator.sub)
            ratio = paired(rows, contender, "persistent", "cpu_us", operator.truediv)
            compared = contender != "persistent"
            table_rows.append(
                [
                    VENDORS[vendor],
                    NAMES[contender],
                    spread([r["cpu_us"] for r in cell]),
                    spread(added) if compared else "",
                    spread(ratio, "{:.2f}x") if compared else "",
                    str(sum(r["errors"] for r in cell)),
                ]
            )
    return Table(
        f"CPU time per request through Django's WSGI handler, no HTTP: {env['threads']} "
        f"threads in one process, pool of {env['pool_size']}",
        [
            "database",
            "contender",
            "µs CPU per request (min-max)",
            "µs added over persistent, same round (min-max)",
            "CPU vs persistent, same round (min-max)",
            "errors",
        ],
        table_rows,
    )


def targets_table(targets: list[Target], title: str = "Targets") -> Table:
    return Table(
        title,
        ["target", "result", "measured"],
        [[t.text, "PASS" if t.passed else "MISS", t.measured] for t in targets],
    )


def describe(
    web: dict[str, Any] | None, cycle: dict[str, Any] | None, cpu: dict[str, Any] | None
) -> str:
    env = (web or cycle or {}).get("environment", {})
    parts = [f"Measured on {env.get('date', '?')}, {env.get('cpus', '?')} CPUs"]
    if web:
        e = web["environment"]
        parts.append(
            f"Python {e['python']}, Django {e['django']}, gunicorn {e['gunicorn']} "
            f"({e['workers']} workers x {e['threads']} gthread threads), wrk on loopback; "
            "every contender's site up at once, each on a database of its own; at each "
            f"concurrency, {e['rounds']} rounds in which the contenders take turns (order "
            f"reversed every other round), {e['seconds']:g} s per measurement "
            f"after {e['warmup']:g} s of warm-up; pool size {e['pool_size']} per worker for "
            "every pool"
        )
        if any(by(data["rows"], contender="persistent_aa") for data in web["databases"].values()):
            parts.append(
                "a second site with persistent connections, identical to the first but for its "
                "database, takes its turn on persistent's other side, as close to it as "
                "django_dbpool: how far apart these two come (the A/A pair) is how far apart "
                "two runs of the same thing come on this machine, and each throughput target "
                "sets its misses against it"
            )
        if "min_worker_share" in e:
            repeats = sum(
                row.get("attempts", 1) - 1
                for data in web["databases"].values()
                for row in data["rows"]
            )
            total = sum(len(data["rows"]) for data in web["databases"].values())
            left_out = total - sum(
                len(balanced(web, data["rows"])) for data in web["databases"].values()
            )
            parts.append(
                "a measurement in which one gunicorn worker used less than "
                f"{e['min_worker_share']:.0%} of the workers' CPU time (wrk's connections "
                "nearly all accepted by the other worker) is made again, up to "
                f"{e['balance_attempts']} times ({repeats} repeats in this run); "
                f"{left_out} of {total} measurements were still unbalanced after that and "
                "are left out of requests/s, latency and the ratios (their errors, "
                "connections, statements and reuse count); statements per request are "
                "counted over a pass in which every request is answered, after an "
                "uncounted pass of the same size"
            )
    text = "; ".join(parts) + "."
    measured = (
        [row for d in web["databases"].values() for row in cpu_measured(web, d["rows"])]
        if web
        else []
    )
    idle = [row["idle_share"] for row in measured]
    if idle:
        text += (
            " CPU time over HTTP: read from ``/proc`` around each measurement, the gunicorn "
            "workers' own and the whole machine's busy time (workers, database server and "
            "wrk), per request answered. The machine was busy "
            f"{1 - max(idle):.0%}-{1 - min(idle):.0%} of the time (median "
            f"{1 - median(idle):.0%}), so requests/s follow the machine's CPU time per request."
        )
    if cpu:
        e = cpu["environment"]
        text += (
            " CPU time per request: the same view called through Django's WSGI handler by "
            f"{e['threads']} threads in one process (as in one gunicorn worker, with "
            "``request_started`` and ``request_finished``), "
            f"{e['requests']:,} requests per run after a warm-up, a fresh process per run, "
            f"{e['rounds']} rounds in which the contenders take turns; without HTTP, what "
            "differs between contenders is what Django does around the query."
        )
    return text


def duration(seconds: int) -> str:
    """``seconds`` as a reader would say it: 45 s, 12 min, 1 h 05 min."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60  # half a minute rounds up
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def provenance(results: dict[str, dict[str, Any] | None]) -> str:
    """Which code each results file measured (``revision.py``), by label, and how long its
    run took where the file records it; empty when no file records the code (results from
    before it was recorded)."""
    present = {label: data for label, data in results.items() if data}
    if not any("revision" in data["environment"] for data in present.values()):
        return ""
    parts, elapsed = [], []
    for label, data in present.items():
        environment = data["environment"]
        part = f"{label} at {environment.get('revision', 'a commit not recorded')}"
        seconds = environment.get("elapsed_s")
        if seconds is not None:
            part += f" ({duration(seconds)})"
        parts.append(part)
        elapsed.append(seconds)
    timed = ", and how long each part ran" if any(e is not None for e in elapsed) else ""
    text = (
        "Code measured (the commit checked out; +changes: with uncommitted changes to it)"
        f"{timed}: " + ", ".join(parts) + "."
    )
    if len(elapsed) > 1 and None not in elapsed:
        text += f" Together {duration(sum(elapsed))}, without starting the servers."
    return text


def sections(render: Callable[[Table], str], image: str | None, *, pool: bool = False) -> str:
    """Every table; with ``pool``, the pool's own overhead too (the README shows that one in
    a section of its own, Overhead)."""
    web, cycle, jitter = load("web.json"), load("cycle.json"), load("jitter.json")
    cpu = load("request_cpu.json")
    targets = (web_targets(web, cpu) if web else []) + (cycle_targets(cycle) if cycle else [])
    pool_cycle = load("pool_cycle.json") if pool else None
    if pool_cycle:
        targets.append(pool_overhead_target(pool_cycle))
    out = [describe(web, cycle, cpu), ""]
    measured = provenance(
        {
            "HTTP load": web,
            "latency scenario": jitter,
            "CPU time per request": cpu,
            "Django-level cycle": cycle,
            "pool overhead": pool_cycle,
        }
    )
    if measured:
        out += [measured, ""]
    if image and web:
        out += [image, ""]
    if targets:
        out += [render(targets_table(targets)), ""]
    for table in web_tables(web) if web else []:
        out += [render(table), ""]
    web_cpu = web_cpu_table(web) if web else None
    if web_cpu:
        out += [render(web_cpu), ""]
    if cpu:
        out += [render(request_cpu_table(cpu)), ""]
    if cycle:
        out += [render(cycle_table(cycle)), ""]
    if jitter:
        out += [render(jitter_table(jitter)), ""]
    if pool_cycle:
        out += [render(pool_cycle_table(pool_cycle)), ""]
    return "\n".join(out).rstrip() + "\n"


def readme_section() -> str:
    return sections(
        Table.rst,
        ".. image:: benchmarks/results/web.png\n   :alt: requests per second by contender",
    )


def pool_section() -> str:
    pool = load("pool_cycle.json")
    if not pool:
        return "No results yet: run ``make bench-pool``.\n"
    target = targets_table([pool_overhead_target(pool)], "Overhead target")
    return pool_cycle_table(pool).rst() + "\n" + target.rst()


def leases_section(markdown: bool = False) -> str:
    """Transaction leases (``leases_report.py``), in reStructuredText or Markdown."""
    import leases_report  # it imports this module's tables

    return leases_report.section(lambda table: table.markdown() if markdown else table.rst())


def replace_section(text: str, start: str, end: str, body: str) -> str:
    head, found, rest = text.partition(start + "\n")
    if not found or end not in rest:
        raise SystemExit(f"README.rst has no {start} ... {end} markers")
    return head + start + "\n\n" + body + "\n" + end + rest[rest.index(end) + len(end) :]


def chart(web: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    databases = web["databases"]
    fig, axes = plt.subplots(1, len(databases), figsize=(6 * len(databases), 4.8), squeeze=False)
    for ax, (vendor, data) in zip(axes[0], databases.items(), strict=True):
        rows = data["rows"]
        timed = balanced(web, rows)
        contenders = contenders_of(rows)
        concurrencies = sorted({row["concurrency"] for row in rows})
        width = 0.8 / len(contenders)
        for i, contender in enumerate(contenders):
            values = [
                [r["rps"] for r in by(timed, contender=contender, concurrency=c)] or [0.0]
                for c in concurrencies
            ]
            mid = [median(v) for v in values]
            err = [
                [m - min(v) for m, v in zip(mid, values, strict=True)],
                [max(v) - m for m, v in zip(mid, values, strict=True)],
            ]
            ax.bar(
                [x + i * width for x in range(len(concurrencies))],
                mid,
                width,
                yerr=err,
                capsize=2,
                label=NAMES[contender],
                color=COLOURS[contender],
            )
        ax.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(concurrencies))])
        ax.set_xticklabels([f"{c} clients" for c in concurrencies])
        ax.set_ylabel("requests per second (median, min-max)")
        ax.set_title(f"{VENDORS[vendor]}: one indexed SELECT per request")
    # One legend for both panels, below them: the contenders' names are too long to fit
    # inside a panel, and a contender missing on one database (Django's native pool) is
    # still named once.
    labelled = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    order = [NAMES[name] for name in NAMES if NAMES[name] in labelled]
    fig.legend(
        [labelled[label] for label in order],
        order,
        loc="lower center",
        ncols=3,
        fontsize="small",
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    readme = README.read_text()
    updated = replace_section(readme, START, END, readme_section())
    updated = replace_section(updated, POOL_START, POOL_END, pool_section())
    updated = replace_section(updated, LEASES_START, LEASES_END, leases_section())
    if "--check" in argv:
        if updated != readme:
            print(
                "README.rst's benchmark sections differ from benchmarks/results: "
                "run `python benchmarks/report.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    web = load("web.json")
    (RESULTS / "report.md").write_text(
        "# Benchmarks\n\n"
        + sections(Table.markdown, "![requests per second](web.png)", pool=True)
        + "\n## Transaction leases\n\n"
        + leases_section(markdown=True)
    )
    drawn = ""
    if web and "--no-chart" not in argv:
        chart(web, RESULTS / "web.png")
        drawn = ", web.png"
    README.write_text(updated)
    print(f"wrote benchmarks/results/report.md{drawn} and README.rst's benchmark sections")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
