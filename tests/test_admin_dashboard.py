"""The "Connection pools" admin dashboard: who may see it, what its JSON holds, that it never
shows a password, and, in a real browser against the example project under load, that its
numbers move between refreshes."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import Client, override_settings
from django.urls import NoReverseMatch, reverse

from django_dbpool import snapshots
from django_dbpool.checks import pooled_aliases
from django_dbpool.dashboard import _merged_percentile, display
from tests import processes
from tests.test_poolstats import LEASE_DOCUMENTS_HOLDS, LEASE_DOCUMENTS_PINS, write_lease_documents

DASHBOARD = "admin:django_dbpool_connectionpool_changelist"
DATA = "admin:django_dbpool_connectionpool_data"

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def published() -> Iterator[dict[str, Any]]:
    """This process's pools opened and published, plus a second process's snapshot (from
    another host, so that it is kept although no such pid runs here); yields that one."""
    for alias in pooled_aliases():
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    own = snapshots.publish_now()
    assert own is not None
    other = json.loads(own.read_text())
    other.update(pid=424242, host="elsewhere", process="gunicorn example_project.wsgi")
    other["pools"]["default"]["stats"]["gauges"].update(in_use=3, waiting=1)
    path = own.with_name("elsewhere-424242.json")
    path.write_text(json.dumps(other))
    try:
        yield other
    finally:
        path.unlink()


def _user(django_user_model: Any, name: str, *, staff: bool, view: bool = False) -> Any:
    user = django_user_model.objects.create_user(name, password="unused", is_staff=staff)
    if view:
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label="django_dbpool", codename="view_connectionpool"
            )
        )
    return user


def test_admin_index_lists_the_dashboard_for_viewers_only(django_user_model: Any) -> None:
    viewer, blind = Client(), Client()
    viewer.force_login(_user(django_user_model, "viewer", staff=True, view=True))
    blind.force_login(_user(django_user_model, "blind", staff=True))
    link = f'href="{reverse(DASHBOARD)}"'

    page = viewer.get(reverse("admin:index")).content.decode()
    assert "Connection pools" in page
    assert link in page
    page = viewer.get(reverse("admin:app_list", args=["django_dbpool"])).content.decode()
    assert link in page
    page = blind.get(reverse("admin:index")).content.decode()
    assert "Connection pools" not in page
    assert link not in page


def test_dashboard_shows_every_process_in_the_admin_layout(
    admin_client: Client, published: dict[str, Any]
) -> None:
    response = admin_client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    templates = [template.name for template in response.templates]
    assert "django_dbpool/admin/dashboard.html" in templates
    assert "admin/base_site.html" in templates
    page = response.content.decode()
    assert "<h1>Connection pools</h1>" in page
    assert f'data-url="{reverse(DATA)}"' in page
    assert "django_dbpool/dashboard.js" in page
    assert "django_dbpool/dbpool.css" in page
    for alias in pooled_aliases():
        assert f'data-dbpool-alias="{alias}"' in page
    # Both processes' rows, this one's and the other's.
    assert f'<td class="dbpool-num">{os.getpid()}</td>' in page
    assert '<td class="dbpool-num">424242</td>' in page
    assert "Database servers" in page


def test_json_totals_every_process_and_adds_the_server_view(
    admin_client: Client, published: dict[str, Any]
) -> None:
    response = admin_client.get(reverse(DATA))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert set(data) == {"generated_at", "refresh_seconds", "server_every", "aliases", "servers"}
    assert [entry["alias"] for entry in data["aliases"]] == pooled_aliases()
    default = data["aliases"][0]
    assert set(default) == {
        "alias",
        "vendor",
        "lease",
        "processes",
        "gauges",
        "counters",
        "checkouts_per_second",
        "wait_p99_seconds",
        "hold_mean_seconds",
        "hold_p99_seconds",
        "per_process",
        "configuration",
    }
    assert default["vendor"] == settings.DATABASE_VENDOR
    assert default["processes"] == 2
    assert [row["pid"] for row in default["per_process"]] == [os.getpid(), 424242]
    ours = default["per_process"][0]
    assert set(ours["gauges"]) >= {"size", "idle", "in_use", "waiting", "max_size"}
    assert set(ours["counters"]) >= {"acquired", "timeouts", "leaks", "closed"}
    # Totals add both processes up.
    other = published["pools"]["default"]["stats"]
    assert default["gauges"]["in_use"] == ours["gauges"]["in_use"] + 3
    assert default["gauges"]["waiting"] == ours["gauges"]["waiting"] + 1
    assert default["gauges"]["max_size"] == 2 * settings.DATABASES["default"]["POOL"]["MAX_SIZE"]
    assert default["counters"]["acquired"] == 2 * other["counters"]["acquired"] >= 2
    # Both processes lend default's connections per request (its LEASE is the default one).
    assert default["lease"] == "request"
    assert [row["lease"] for row in default["per_process"]] == ["request", "request"]
    hold = other["histograms"]["hold_seconds"]
    assert default["hold_mean_seconds"] == hold["sum"] / hold["count"]
    assert ours["hold_p99_seconds"] == published["pools"]["default"]["hold_p99_seconds"] > 0
    assert default["counters"]["pins"] == {
        reason: 2 * count for reason, count in other["counters"]["pins"].items()
    }
    assert default["configuration"]["pool"]["MAX_SIZE"] == 4
    assert set(default["configuration"]["connection"]) == {"ENGINE", "HOST", "PORT", "NAME", "USER"}

    # default, small and reset share one server and user: one server view, naming all three.
    [server] = data["servers"]
    assert server["aliases"] == pooled_aliases()
    assert "error" not in server, server
    assert server["vendor"] == settings.DATABASE_VENDOR
    assert server["max_connections"] > 0
    assert server["headroom"] == server["max_connections"] - server["reserved"] - server["in_use"]
    assert all({"tag", "state", "connections"} <= set(group) for group in server["groups"])
    assert sum(group["connections"] for group in server["groups"]) >= 1

    # Most refreshes leave the servers' view out (it borrows a connection).
    light = admin_client.get(reverse(DATA) + "?server=0").json()
    assert light["servers"] == []
    assert [entry["alias"] for entry in light["aliases"]] == pooled_aliases()


def _section(page: str, alias: str) -> str:
    start = page.index(f'data-dbpool-alias="{alias}"')
    end = page.find("data-dbpool-alias=", start + 1)
    return page[start : end if end >= 0 else len(page)]


def test_leases_of_every_process_in_the_json_and_on_the_page(
    admin_client: Client, tmp_path: Path
) -> None:
    directory = tmp_path / "stats"
    write_lease_documents(directory)  # two processes with transaction leases, one request
    with override_settings(DBPOOL_STATS_DIR=str(directory)):
        data = admin_client.get(reverse(DATA) + "?server=0").json()
        page = admin_client.get(reverse(DASHBOARD)).content.decode()
    default, *others = data["aliases"]
    assert default["alias"] == "default"
    assert default["lease"] == "mixed"
    assert default["checkouts_per_second"] == 4.0
    assert default["hold_mean_seconds"] == sum(LEASE_DOCUMENTS_HOLDS) / len(LEASE_DOCUMENTS_HOLDS)
    assert default["hold_p99_seconds"] == 0.5
    assert default["counters"]["pinned"] == 3
    assert default["counters"]["pins"] == LEASE_DOCUMENTS_PINS
    rows = default["per_process"]
    assert [
        (row["pid"], row["lease"], row["hold_p99_seconds"], row["counters"]["pinned"])
        for row in rows
    ] == [
        (424242, "transaction", 0.375, 2),
        (434343, "transaction", 0.5, 1),
        (444444, "request", None, 0),
    ]
    assert all("hold_seconds" not in row for row in rows)  # only the merged p99 needs it
    # An alias no process has opened shows its configured LEASE.
    for entry in others:
        pool = settings.DATABASES[entry["alias"]].get("POOL", {})
        assert entry["lease"] == pool.get("LEASE", "request")
        assert entry["hold_mean_seconds"] is None
        assert entry["hold_p99_seconds"] is None

    shown = _section(page, "default")
    for path, kind, text in [
        ("lease", "text", "mixed"),
        ("checkouts_per_second", "rate", "4.0"),
        ("hold_mean_seconds", "seconds", "291.7 ms"),
        ("hold_p99_seconds", "seconds", "500.0 ms"),
        ("counters.pinned", "count", "3"),
        ("counters.pins.transaction", "count", "1"),
        ("counters.pins.cursor", "count", "3"),
        ("counters.pins.pinned", "count", "0"),
        ("counters.pins.raw_connection", "count", "0"),
        ("counters.pins.session_sql", "count", "1"),
        ("counters.pins.shared", "count", "0"),
    ]:
        cell = f'<dd class="dbpool-num" data-dbpool-value="{path}" data-dbpool-format="{kind}">'
        assert f"{cell}{text}</dd>" in shown, path
    assert '<dt title="a cursor was still open">Pins: cursor</dt>' in shown
    # Each process's row says its lease (hold p99 and pins per process: in the JSON).
    for pid, lease in [(424242, "transaction"), (434343, "transaction"), (444444, "request")]:
        assert (
            f'<td class="dbpool-num">{pid}</td><td><code>gunicorn example_project.wsgi</code></td>'
            f"<td>{lease}</td>" in shown
        )


def test_never_a_password(admin_client: Client, published: dict[str, Any]) -> None:
    page = admin_client.get(reverse(DASHBOARD)).content.decode()
    data = admin_client.get(reverse(DATA)).content.decode()
    for alias in settings.DATABASES:
        password = connections[alias].settings_dict["PASSWORD"]
        assert len(password) >= 8  # a password short enough to occur by chance proves nothing
        assert password not in page
        assert password not in data
    assert "PASSWORD" not in page
    assert "PASSWORD" not in data


@pytest.mark.parametrize("who", ["anonymous", "not staff"])
def test_anonymous_and_non_staff_are_sent_to_the_login(who: str, django_user_model: Any) -> None:
    client = Client()
    if who == "not staff":
        client.force_login(_user(django_user_model, "visitor", staff=False, view=True))
    for name in (DASHBOARD, DATA):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login") + "?next=")


def test_staff_without_the_view_permission_is_refused(django_user_model: Any) -> None:
    client = Client()
    client.force_login(_user(django_user_model, "staff", staff=True))
    assert client.get(reverse(DASHBOARD)).status_code == 403
    assert client.get(reverse(DATA)).status_code == 403


def test_nothing_to_add_change_or_delete(admin_client: Client) -> None:
    for view, args in (("add", ()), ("change", (1,)), ("delete", (1,)), ("history", (1,))):
        with pytest.raises(NoReverseMatch):
            reverse(f"admin:django_dbpool_connectionpool_{view}", args=args)
    assert admin_client.get(reverse(DASHBOARD) + "add/").status_code == 404
    assert (
        Permission.objects.filter(content_type__app_label="django_dbpool")
        .values_list("codename", flat=True)
        .get()
        == "view_connectionpool"
    )


def test_wait_percentile_merges_the_processes_histograms() -> None:
    fast = {"count": 99, "max": 0.004, "buckets": {"0.005": 99, "0.1": 99, "+Inf": 99}}
    slow = {"count": 1, "max": 0.08, "buckets": {"0.005": 0, "0.1": 1, "+Inf": 1}}
    assert _merged_percentile([fast, slow], 0.99) == 0.005
    assert _merged_percentile([fast, slow], 1.0) == 0.08  # capped at the largest wait seen
    assert _merged_percentile([], 0.99) is None


def test_display_formats() -> None:
    assert display("transaction", "text") == "transaction"
    assert display(None, "text") == "-"
    assert display(1 / 3, "seconds") == "333.3 ms"
    assert display(2.5, "rate") == "2.5"
    assert display(3, "count") == "3"


# -- in a real browser, against the example project under gunicorn ---------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# Users of the example project's (real) database; passwords are reset on every run.
CREATE_USERS = """
import os
from django.contrib.auth import get_user_model
for name, staff in (("dashboard-staff", True), ("dashboard-visitor", False)):
    user, _ = get_user_model().objects.get_or_create(username=name)
    user.is_staff, user.is_superuser = staff, False
    user.set_password(os.environ["DEMO_ADMIN_PASSWORD"])
    user.save()
    user.user_permissions.clear()
"""


class Load:
    """Client threads sending GET / and the slow /report/ until stopped."""

    def __init__(self, base: str, clients: int) -> None:
        self.base = base
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered = 0
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, n: int) -> None:
        for i in range(10_000):  # bounded; stopped long before
            if self.stop.is_set():
                return
            path = "/report/" if (n + i) % 3 == 0 else "/"
            try:
                urllib.request.urlopen(self.base + path, timeout=30).close()
            except (OSError, urllib.error.HTTPError):
                continue  # the test asserts on the dashboard, not on the load
            with self.lock:
                self.answered += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_dashboard_in_chromium_under_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (tools/dbservers.py lists it)"
    password = secrets.token_urlsafe(16)
    # processes.manage() and gunicorn() pass the environment on to the example project.
    monkeypatch.setenv("DJANGO_STATIC_ROOT", str(tmp_path / "static"))
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", password)
    processes.manage("migrate", "--noinput", "-v", "0")
    processes.manage("demo_data")  # the accounts, and the "admin" superuser
    processes.manage("shell", "-c", CREATE_USERS)
    processes.manage("collectstatic", "--noinput", "-v", "0")
    # A pool smaller than the worker's threads, so that the chart shows some waiting.
    url = processes.database_url()
    url += ("&" if "?" in url else "?") + "pool_max_size=3"
    screenshot = tmp_path / "admin-dashboard.png"

    with (
        processes.gunicorn(url, DJANGO_SERVE_STATIC="1") as (_, base),
        sync_api.sync_playwright() as playwright,
    ):
        load = Load(base, clients=8)
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            _look_and_refuse(browser, base, password, tmp_path, screenshot)
            browser.close()
        finally:
            load.close()
    assert load.answered > 0
    assert screenshot.stat().st_size > 0
    target = os.environ.get("DBPOOL_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, Path(target) / screenshot.name)


def _look_and_refuse(
    browser: Any, base: str, password: str, tmp_path: Path, screenshot: Path
) -> None:
    dashboard = f"{base}/admin/django_dbpool/connectionpool/"
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    page = context.new_page()
    _log_in(page, base, "admin", password)
    page.get_by_role("link", name="Connection pools").first.click()
    page.wait_for_url(dashboard)
    assert page.locator("h1").text_content() == "Connection pools"

    page.wait_for_function(
        "() => Number(document.querySelector('.dbpool-root').dataset.refreshes) >= 1"
    )
    alias = '[data-dbpool-alias="default"]'
    acquired = f'{alias} td[data-dbpool-value="counters.acquired"]'
    before = _value(page, acquired)
    refreshes = page.locator(".dbpool-root").get_attribute("data-refreshes")
    # The next refreshes bring new numbers: the load keeps checking connections out.
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector).textContent !== before",
        arg=[acquired, before],
    )
    assert int(_value(page, acquired)) > int(before)
    assert page.locator(".dbpool-root").get_attribute("data-refreshes") != refreshes
    # Both gunicorn workers are there, not just the one that served the page.
    page.wait_for_function(
        "(selector) => document.querySelectorAll(selector).length === 2",
        arg=f"{alias} [data-dbpool-processes] tr",
    )
    assert _value(page, f'{alias} [data-dbpool-value="processes"]') == "2"
    # The script keeps the leases current too, in the page's own formats.
    assert _value(page, f'{alias} [data-dbpool-value="lease"]') == "request"
    hold_p99 = _value(page, f'{alias} [data-dbpool-value="hold_p99_seconds"]')
    assert re.fullmatch(r"\d+\.\d ms|\d+\.\d\d s", hold_p99), hold_p99
    assert _value(page, f'{alias} [data-dbpool-value="counters.pinned"]') == "0"
    cells = page.locator(f"{alias} [data-dbpool-processes] tr").first.locator("td")
    assert cells.count() == 13
    assert cells.nth(2).text_content() == "request"
    assert "Unavailable" not in _value(page, "[data-dbpool-server-summary]")
    # A few more samples, so that the chart in the screenshot has a shape.
    page.wait_for_function(
        "() => Number(document.querySelector('canvas[data-dbpool-chart]').dataset.samples) >= 6"
    )
    # By now a refresh has brought the servers' view too (every fifth one does).
    assert "max_connections" in _value(page, "[data-dbpool-server-summary]")
    assert page.locator("[data-dbpool-server-groups] tr").count() >= 1
    page.screenshot(path=str(screenshot))
    page.screenshot(path=str(tmp_path / "admin-dashboard-full.png"), full_page=True)
    light_line = _css_variable(page, "--link-fg")
    page.emulate_media(color_scheme="dark")
    assert _css_variable(page, "--link-fg") != light_line  # the chart follows the theme
    page.screenshot(path=str(tmp_path / "admin-dashboard-dark.png"))

    # A user who is not staff cannot even sign in to the admin, nor reach either URL.
    page = browser.new_context().new_page()
    _log_in(page, base, "dashboard-visitor", password, succeeds=False)
    for url in (dashboard, dashboard + "data.json"):
        response = page.goto(url)
        assert response is not None
        assert response.url.startswith(f"{base}/admin/login/?next=")

    # Staff without the view permission: no entry in the index, 403 on both URLs.
    page = browser.new_context().new_page()
    _log_in(page, base, "dashboard-staff", password)
    assert page.get_by_role("link", name="Connection pools").count() == 0
    for url in (dashboard, dashboard + "data.json"):
        response = page.goto(url)
        assert response is not None
        assert response.status == 403


def _log_in(page: Any, base: str, username: str, password: str, succeeds: bool = True) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    if succeeds:
        page.wait_for_url(f"{base}/admin/")
    else:
        page.wait_for_selector(".errornote")


def _value(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.text_content())


def _css_variable(page: Any, name: str) -> str:
    return str(
        page.evaluate(
            "(name) => getComputedStyle(document.querySelector('canvas')).getPropertyValue(name)",
            name,
        )
    ).strip()
