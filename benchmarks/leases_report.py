"""The transaction leases part of the benchmark report, from ``results/leases.json``
(``leases.py``): its targets with PASS or MISS, one table of the HTTP scenarios and one of
CPU time per request. ``report.py`` puts them in ``results/report.md`` and in ``README.rst``
between ``.. leases-report-start`` and ``-end``.

Every HTTP comparison is a ratio of medians over the rounds; the single rounds' ratios (the
runs of one round were made side by side) give its spread. A CPU comparison is the median of
the blocks' ratios (each block's phases ran side by side in one process), with the middle
half of them. The A/A pair (transaction leases twice, two identical sites or aliases) shows
how far apart two measurements of the same thing come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from report import Table, Target, by, duration, load, median, spread, targets_table

VENDORS = {"postgresql": "PostgreSQL", "mysql": "MariaDB"}
#: Short names of the scenarios, as the tables show them.
SCENARIOS = {
    "item_wsgi": "1. gunicorn, one query",
    "wait_asgi": "2. uvicorn, async: query, 50 ms, query",
    "item_asgi": "2. uvicorn, async: one query",
    "wait_wsgi": "2. gunicorn, sync: query, 50 ms, query",
}
#: Server sessions transaction leases may hold: 2 workers x MAX_SIZE.
WORKERS = 2


def reference(rows: list[dict[str, Any]]) -> str:
    """The contender under test in ``rows``: transaction leases (not their A/A twin)."""
    names: set[str] = {row["contender"] for row in rows}
    (ours,) = (n for n in names if n.startswith("transaction_") and not n.endswith("_aa"))
    return ours


def balanced(data: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose throughput counts: both workers served (see ``web.py``)."""
    floor = data["environment"]["min_worker_share"]
    return [row for row in rows if row["worker_share"] >= floor]


def ratio_of_medians(
    rows: list[dict[str, Any]], a: str, b: str
) -> tuple[float, list[float]] | None:
    """``a``'s median requests per second over ``b``'s, and the single rounds' ratios; None
    when either has no row."""
    ra, rb = by(rows, contender=a), by(rows, contender=b)
    if not ra or not rb:
        return None
    rounds = []
    for rnd in sorted({row["round"] for row in ra} & {row["round"] for row in rb}):
        rounds.append(by(ra, round=rnd)[0]["rps"] / by(rb, round=rnd)[0]["rps"])
    return median([r["rps"] for r in ra]) / median([r["rps"] for r in rb]), rounds


def ratio_text(ratio: tuple[float, list[float]] | None) -> str:
    if ratio is None:
        return "n/a"
    value, rounds = ratio
    text = f"{value:.2f}x"
    if rounds:
        text += f" (rounds {min(rounds):.2f}x-{max(rounds):.2f}x)"
    return text


def http_targets(data: dict[str, Any]) -> list[Target]:
    targets: list[Target] = []
    scenarios = data["scenarios"]

    def throughput(key: str, vendor: str, other: str, floor: float, text: str) -> Target | None:
        found = scenarios.get(key, {}).get("databases", {}).get(vendor)
        if not found:
            return None
        rows = balanced(data, found["rows"])
        ours = reference(found["rows"])
        ratio = ratio_of_medians(rows, ours, other)
        aa = ratio_of_medians(rows, ours, f"{ours}_aa")
        measured = ratio_text(ratio) + (f"; A/A {ratio_text(aa)}" if aa else "")
        # What the view allows on this machine at all: a pool no caller ever waits on.
        ceiling = ratio_of_medians(rows, "request_64", other)
        if other != "request_64" and ceiling and floor > 1:
            measured += (
                "; request leases with MAX_SIZE 64, where no caller waits for a connection, "
                f"reach {ceiling[0]:.2f}x it"
            )
        label = f"{VENDORS[vendor]}, {SCENARIOS[key]}: {text}"
        return Target(label, ratio is not None and ratio[0] >= floor, measured)

    def sessions_and_errors(
        keys: tuple[str, ...], where: str, vendor: str, bound: int
    ) -> list[Target]:
        rows = [
            row
            for key in keys
            for row in scenarios.get(key, {}).get("databases", {}).get(vendor, {}).get("rows", [])
            if row["contender"].startswith("transaction_")
        ]
        if not rows:
            return []
        where = f"{VENDORS[vendor]}, {where}"
        peak = max(row["peak_sessions"] for row in rows)
        errors = sum(row["errors"] for row in rows)
        return [
            Target(
                f"{where}: transaction leases at most {bound} server sessions",
                peak <= bound,
                f"peak {peak}",
            ),
            Target(
                f"{where}: transaction leases, zero errors (non-2xx, socket errors)",
                errors == 0,
                f"{errors} errors",
            ),
        ]

    for vendor in VENDORS:
        candidates = [
            throughput(
                "item_wsgi",
                vendor,
                "persistent",
                0.97,
                "transaction leases (MAX_SIZE 2) at least 0.97x persistent connections",
            ),
        ]
        targets += [t for t in candidates if t]
        targets += sessions_and_errors(("item_wsgi",), SCENARIOS["item_wsgi"], vendor, WORKERS * 2)[
            :1
        ]
        candidates = [
            throughput(
                "wait_asgi",
                vendor,
                "request_4",
                5.0,
                "transaction leases (MAX_SIZE 4) at least 5x request leases (MAX_SIZE 4)",
            ),
            throughput(
                "wait_asgi",
                vendor,
                "request_64",
                0.9,
                "transaction leases (MAX_SIZE 4) at least 0.9x request leases (MAX_SIZE 64)",
            ),
            throughput(
                "wait_asgi",
                vendor,
                "realpool_4",
                1.1,
                "transaction leases at least 1.1x django-pg-real-pool (max_size 4)",
            ),
            throughput(
                "item_asgi",
                vendor,
                "realpool_4",
                1.3,
                "transaction leases at least 1.3x django-pg-real-pool (max_size 4)",
            ),
        ]
        targets += [t for t in candidates if t]
        targets += sessions_and_errors(
            ("wait_asgi", "item_asgi"), "2. uvicorn, both async views", vendor, WORKERS * 4
        )
    return targets


#: The CPU scenario's pairs: (transaction leases, request leases, what MAX_SIZE means there).
CPU_PAIRS = (
    ("transaction_4", "request_4", "MAX_SIZE 4, 8 threads share them"),
    ("transaction_8", "request_8", "MAX_SIZE 8, one per thread"),
)


def block_ratio(rows: list[dict[str, Any]], a: str, b: str) -> tuple[float, list[float]] | None:
    """``a``'s CPU time per request over ``b``'s: the median of the blocks' ratios (each
    block's phases ran side by side, see ``request_cpu.run_interleaved``), and those ratios;
    None when either has no row."""
    ra, rb = by(rows, contender=a), by(rows, contender=b)
    if not ra or not rb:
        return None
    theirs = {row["round"]: row["cpu_us"] for row in rb}
    blocks = [row["cpu_us"] / theirs[row["round"]] for row in ra if row["round"] in theirs]
    return median(blocks), blocks


def block_text(ratio: tuple[float, list[float]] | None) -> str:
    if ratio is None:
        return "n/a"
    value, blocks = ratio[0], sorted(ratio[1])
    quarter = len(blocks) // 4
    return (
        f"{value:.3f}x (middle half of {len(blocks)} blocks: "
        f"{blocks[quarter]:.2f}x-{blocks[-quarter - 1]:.2f}x)"
    )


def cpu_targets(data: dict[str, Any]) -> list[Target]:
    targets = []
    for vendor, found in data["cpu"]["databases"].items():
        rows = found["rows"]
        aa = block_ratio(rows, "transaction_4_aa", "transaction_4")
        for ours, other, sizes in CPU_PAIRS:
            ratio = block_ratio(rows, ours, other)
            measured = block_text(ratio) + (f"; A/A {block_text(aa)}" if aa else "")
            if ours == "transaction_4":
                # What the ratio is made of: sharing connections, or running more threads.
                shared = block_ratio(rows, "transaction_4", "transaction_8")
                wider = block_ratio(rows, "request_8", "request_4")
                if shared and wider:
                    measured += (
                        f"; transaction leases with MAX_SIZE 4 cost {shared[0]:.3f}x those "
                        f"with MAX_SIZE 8, one connection per thread; request leases with "
                        f"MAX_SIZE 8, which run 8 threads at a time rather than 4, cost "
                        f"{wider[0]:.3f}x request leases with MAX_SIZE 4"
                    )
            targets.append(
                Target(
                    f"{VENDORS[vendor]}, 3. CPU time per request without HTTP, ten queries, "
                    f"{sizes}: transaction leases at most 1.05x request leases",
                    ratio is not None and ratio[0] <= 1.05,
                    measured,
                )
            )
    return targets


def failed(data: dict[str, Any]) -> list[Target]:
    """A part of the run that failed: its targets could not be judged, a miss."""
    return [
        Target(
            f"{VENDORS[f['database']]}, {f['part']}: measured",
            False,
            "failed: " + f["error"].strip().splitlines()[-1],
        )
        for f in data.get("failures", [])
    ]


def http_table(data: dict[str, Any]) -> Table:
    names = data["contenders"]
    table_rows = []
    for key, scenario in data["scenarios"].items():
        for vendor, found in scenario["databases"].items():
            rows = found["rows"]
            timed = balanced(data, rows)
            ours = reference(rows)
            for name in dict.fromkeys(row["contender"] for row in rows):
                cell, fast = by(rows, contender=name), by(timed, contender=name)
                versus = "" if name == ours else ratio_text(ratio_of_medians(timed, ours, name))
                table_rows.append(
                    [
                        SCENARIOS[key],
                        VENDORS[vendor],
                        names[name],
                        spread([r["rps"] for r in fast]) if fast else "n/a",
                        f"{median([r['p99_ms'] for r in fast]):.0f}" if fast else "n/a",
                        str(sum(r["errors"] for r in cell)),
                        str(max(r["peak_sessions"] for r in cell)),
                        versus,
                    ]
                )
    env = data["environment"]
    return Table(
        f"Transaction leases over HTTP, {env['clients']} clients: medians of {env['rounds']} "
        "rounds (min-max)",
        [
            "scenario",
            "database",
            "contender",
            "requests/s",
            "p99 ms",
            "errors",
            "peak server sessions",
            "transaction leases vs it (rounds)",
        ],
        table_rows,
    )


def cpu_table(data: dict[str, Any]) -> Table:
    names = data["contenders"]
    table_rows = []
    for vendor, found in data["cpu"]["databases"].items():
        rows = found["rows"]
        for name in dict.fromkeys(row["contender"] for row in rows):
            cell = by(rows, contender=name)
            # Against transaction leases of the same MAX_SIZE.
            ours = "transaction_8" if name.endswith("_8") else "transaction_4"
            table_rows.append(
                [
                    VENDORS[vendor],
                    names[name],
                    spread([r["cpu_us"] for r in cell]),
                    "" if name == ours else block_text(block_ratio(rows, ours, name)),
                    str(sum(r["errors"] for r in cell)),
                ]
            )
    cpu, env = data["cpu"], data["environment"]
    return Table(
        f"3. CPU time per request without HTTP: {cpu['path']} (ten queries) through Django's "
        f"WSGI handler, {cpu['threads']} threads, the contenders taking turns in one process "
        f"(database aliases), {env['cpu_blocks']} blocks of {env['cpu_per_thread']} requests "
        "per thread and contender: medians of the blocks (min-max)",
        [
            "database",
            "contender",
            "µs CPU per request (min-max)",
            "transaction leases' CPU over it, block by block",
            "errors",
        ],
        table_rows,
    )


def describe(data: dict[str, Any]) -> str:
    env = data["environment"]
    unbalanced = total = 0
    for scenario in data["scenarios"].values():
        for found in scenario["databases"].values():
            total += len(found["rows"])
            unbalanced += len(found["rows"]) - len(balanced(data, found["rows"]))
    return (
        f"Measured on {env['date']} at {env['revision']} ({duration(env['elapsed_s'])}, "
        f"without starting the servers), {env['cpus']} CPUs; Python {env['python']}, Django "
        f"{env['django']}, gunicorn {env['gunicorn']} ({env['workers']} workers x "
        f"{env['threads']} gthread threads), uvicorn {env['uvicorn']} ({env['workers']} "
        "workers, each on a listening socket of its own with SO_REUSEPORT); wrk with "
        f"{env['clients']} keep-alive clients on loopback. Each contender's site is up for its "
        "scenario, on a database of its own; in each of "
        f"{env['rounds']} rounds the contenders take turns (order reversed every other round), "
        f"{env['seconds']:g} s per measurement after {env['warmup']:g} s of warm-up; before "
        f"the first round, each site served each of its views for {env['site_warmup']:g} s, "
        "uncounted, so that its pool had opened what the load needs. Server "
        "sessions: the peak of the database's own count (``pg_stat_activity``, the "
        "processlist), sampled every 20 ms through warm-up and measurement. Ratios are ratios "
        "of medians, with the range of the single rounds' ratios; the A/A pair is transaction "
        "leases twice, two identical sites. A measurement in which one worker used less than "
        f"{env['min_worker_share']:.0%} of the workers' CPU time was made again, up to "
        f"{env['balance_attempts']} times; {unbalanced} of {total} were still unbalanced and "
        "are left out of requests/s, latency and ratios (their errors and sessions count). "
        f"CPU time: one process per database, {env['cpu_blocks']} blocks; in each, every "
        f"contender (a database alias of its own) serves {env['cpu_per_thread']} requests on "
        "each thread in turn, the order reversed every other block, after a warm-up; ratios "
        "are medians of the blocks' ratios, with the middle half of them."
    )


def section(render: Callable[[Table], str]) -> str:
    """The whole part, rendered by ``render`` (``Table.rst`` or ``Table.markdown``)."""
    data = load("leases.json")
    if not data:
        return "No results yet: run ``make bench-leases``.\n"
    targets = http_targets(data) + cpu_targets(data) + failed(data)
    parts = [describe(data), render(targets_table(targets, "Transaction leases: targets"))]
    parts.append(render(http_table(data)))
    if data["cpu"]["databases"]:
        parts.append(render(cpu_table(data)))
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"
