"""Fault scenario 8: the example project's transfers run concurrently through database
restarts and killed sessions. Money is neither created nor lost, every transfer that was
answered as done is in the database, and none is half applied."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import urlencode

from tests.faults.harness import FULL, GRACE, Database, private_database, record, serving
from tests.faults.load import Load, Request, errors_text, first_success_after, unanswered
from tests.faults.report import Row

ACCOUNTS = 8
OPENING = Decimal("100000.00")
TIMEOUT = 3
# Any 32 letters and digits make a valid CSRF secret: the same one in the cookie and in
# the form passes Django's check, as a browser's would.
CSRF = "faultsuite" * 3 + "ok"

Transfer = tuple[int, int, Decimal]


def open_accounts(db: Database) -> list[int]:
    with db.connect() as conn:
        cursor = conn.cursor()
        for n in range(ACCOUNTS):
            cursor.execute(
                "INSERT INTO bank_account (name, balance) VALUES (%s, %s)", (f"safe-{n}", OPENING)
            )
        cursor.execute("SELECT id FROM bank_account WHERE name LIKE 'safe-%%' ORDER BY id")
        return [int(row[0]) for row in cursor.fetchall()]


def transfers(accounts: list[int]) -> Callable[[int, int], Request]:
    def request(client: int, i: int) -> Request:
        source = accounts[(client + i) % ACCOUNTS]
        target = accounts[(client + 3 * i + 1) % ACCOUNTS]
        if target == source:
            target = accounts[(accounts.index(source) + 1) % ACCOUNTS]
        # Unique per request, so that each answered transfer can be found in the database.
        amount = Decimal(client * 10_000 + i + 100) / 100
        body = urlencode(
            {"source": source, "target": target, "amount": amount, "csrfmiddlewaretoken": CSRF}
        )
        return Request(
            "POST",
            "/transfer/",
            body.encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={CSRF}"},
            tag=(source, target, amount),
        )

    return request


def test_transfers_through_restarts_and_kills_lose_nothing() -> None:
    faults = ["restart", "kill"] * (3 if FULL else 1)
    with private_database() as db:
        accounts = open_accounts(db)
        url = db.app_url(max_size=4, timeout=TIMEOUT, backoff_max=1)
        with serving(url) as app:
            load = Load(app.base, clients=8, request=transfers(accounts), requests=9_000)
            load.start()
            load.wait_for(lambda rs: sum(r.status == 302 for r in rs) >= 20)
            before = db.sessions()
            windows: list[tuple[float, float]] = []
            for fault in faults:
                begun = time.monotonic()
                if fault == "restart":
                    db.stop()
                    time.sleep(1.0)
                    db.start()
                else:
                    db.kill_sessions()
                ended = time.monotonic()
                windows.append((begun, ended))
                load.wait_for(lambda rs, t=ended: sum(r.ok and r.start >= t for r in rs) >= 20)
            results = load.run_until_stopped()
            after = db.sessions()
        with db.connect() as conn:
            cursor = conn.cursor()
            marks = ", ".join(["%s"] * ACCOUNTS)
            cursor.execute(f"SELECT id, balance FROM bank_account WHERE id IN ({marks})", accounts)
            balances = {int(pk): Decimal(balance) for pk, balance in cursor.fetchall()}
            cursor.execute(
                f"SELECT source_id, target_id, amount FROM bank_transfer WHERE source_id IN "
                f"({marks})",
                accounts,
            )
            stored: Counter[Transfer] = Counter(
                (int(s), int(t), Decimal(a)) for s, t, a in cursor.fetchall()
            )

    assert unanswered(results) == []
    assert max(r.duration for r in results) < TIMEOUT + GRACE
    # Failures only for requests sent while the database was down or in flight at a fault
    # (their connection was lost): 503s, never a 500.
    assert {r.status for r in results} <= {302, 503}
    # Money is neither created nor lost.
    assert sum(balances.values()) == ACCOUNTS * OPENING
    # Every transfer answered as done is stored, once.
    done = Counter(r.request.tag for r in results if r.status == 302)
    assert done, "no transfer succeeded"
    missing = [t for t in done if stored[t] != 1]  # type: ignore[index]
    assert missing == []
    assert max(stored.values()) == 1
    # None is half applied: each balance is its opening plus what the stored transfers say.
    for account in accounts:
        expected = OPENING
        expected += sum(a * n for (_, t, a), n in stored.items() if t == account)
        expected -= sum(a * n for (s, _, a), n in stored.items() if s == account)
        assert balances[account] == expected, account

    last = windows[-1][1]
    first = first_success_after(results, last)
    assert first is not None
    unconfirmed = sum(stored.values()) - sum(done.values())
    record(
        Row(
            scenario="8. Data safety",
            vendor=db.vendor,
            requests=len(results),
            errors=errors_text(results),
            recovery_s=first.end - last,
            connections_before=before,
            connections_after=after,
            outcome=(
                f"{len(faults) // 2} restart(s) and {len(faults) // 2} kill(s) during "
                f"{sum(done.values())} answered transfers: total unchanged, all stored, none "
                f"half applied ({unconfirmed} committed but not answered)"
            ),
        )
    )
