"""Connection tagging: application_name, query comments, X-Request-ID, and no injection."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_dbpool import tagging
from django_dbpool.tagging import application_name, sql_comment, tag, with_comment
from example_project.bank.models import Account
from tests import processes
from tests.conftest import wsgi_request

# A well-formed sqlcommenter comment at the end of a statement: nothing but encoded values.
COMMENT = re.compile(r" /\*([a-z_]+='[A-Za-z0-9_.~%-]*')(,[a-z_]+='[A-Za-z0-9_.~%-]*')*\*/;?$")

OWN_QUERY_TEXT = {
    "postgresql": "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "mysql": "SELECT INFO FROM information_schema.processlist WHERE ID = CONNECTION_ID()",
}


def encoded(value: str) -> str:
    return quote(value, safe="")


def own_query_text() -> str:
    with connection.cursor() as cursor:
        cursor.execute(OWN_QUERY_TEXT[connection.vendor])
        return str(cursor.fetchone()[0])


# -- formatting ---------------------------------------------------------------------------------


def test_comment_format_sorted_encoded_and_escaped_for_the_driver() -> None:
    tags = {"view": "bank:list", "route": "a/<int:pk>/", "app": "p:h:1:default"}
    assert sql_comment(tags, escape_percent=False) == (
        " /*app='p%3Ah%3A1%3Adefault',route='a%2F%3Cint%3Apk%3E%2F',view='bank%3Alist'*/"
    )
    assert sql_comment({"route": "x/"}, escape_percent=True) == " /*route='x%%2F'*/"
    assert with_comment("SELECT 1;", {"a": "b"}, False) == "SELECT 1 /*a='b'*/;"
    assert with_comment("INSERT INTO t", {"a": "b"}, False, at=6) == "INSERT /*a='b'*/ INTO t"
    hostile = "*/ DROP TABLE x; -- ' \" \\ %s"
    comment = sql_comment({"route": hostile}, escape_percent=False)
    assert COMMENT.fullmatch(comment)
    assert "*/" not in comment[3:-2]


def test_request_id_header_is_used_only_when_well_formed() -> None:
    assert tagging.request_id_from("abc-123_X.y") == "abc-123_X.y"
    for bad in (None, "", "x" * 65, "*/ DROP TABLE x; --", "a b", "é"):
        generated = tagging.request_id_from(bad)
        assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_application_name_is_cut_to_63_bytes() -> None:
    with override_settings(DBPOOL_APPLICATION_NAME="é" * 40 + "{alias}"):
        name = application_name("default")
    assert len(name.encode()) <= 63
    assert name == "é" * 31  # 62 bytes: a character is never cut in half
    assert application_name("default").endswith(":default")


def test_management_command_name_from_argv() -> None:
    assert tagging.command_name(["manage.py", "migrate", "--noinput"]) == "migrate"
    assert tagging.command_name(["/srv/app/manage.py", "shell"]) == "shell"
    assert tagging.command_name(["django-admin", "check"]) == "check"
    assert tagging.command_name(["gunicorn", "app.wsgi"]) is None
    assert tagging.command_name(["manage.py", "--help"]) is None


# -- on the database ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_statements_inside_a_tag_carry_the_process_tag_and_the_route() -> None:
    assert "/*" not in own_query_text()  # no context: no comment
    with tag(route="nightly-report"):
        text = own_query_text()
    app = connection.dbpool_app_tag()
    assert text.endswith(f" /*app='{encoded(app)}',route='nightly-report'*/")

    @tag(route="decorated")
    def task() -> str:
        return own_query_text()

    assert task().endswith(f" /*app='{encoded(app)}',route='decorated'*/")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            assert cursor.fetchone()[0] == app


@pytest.mark.django_db(transaction=True)
def test_a_slow_tagged_request_shows_in_the_activity_view() -> None:
    wsgi_request("/probe/session/")  # a pooled connection exists and is idle
    done = threading.Event()
    request = threading.Thread(target=lambda: (wsgi_request("/probe/sleep/"), done.set()))
    request.start()
    sql = {
        "postgresql": "SELECT query, application_name FROM pg_stat_activity"
        " WHERE query LIKE '%%pg_sleep(1.5)%%' AND pid <> pg_backend_pid()",
        "mysql": "SELECT INFO, NULL FROM information_schema.processlist"
        " WHERE INFO LIKE '%%SLEEP(1.5)%%' AND ID <> CONNECTION_ID()",
    }[connection.vendor]
    from tests.backends.test_pooling import raw_connection

    seen: list[tuple[str, str | None]] = []
    with raw_connection() as conn:
        cursor = conn.cursor()
        deadline = time.monotonic() + 30
        while not seen and not done.is_set() and time.monotonic() < deadline:
            cursor.execute(sql)
            seen = list(cursor.fetchall())
    request.join(30)
    assert seen, "the slow query never showed in the activity view"
    query, app_name = seen[0]
    app = application_name("default")
    assert f"app='{encoded(app)}'" in query
    assert f"route='{encoded('probe/sleep/')}'" in query
    assert "view='" in query
    if connection.vendor == "postgresql":
        assert app_name == app


@pytest.mark.django_db(transaction=True)
def test_hostile_request_id_and_route_leave_the_schema_intact() -> None:
    hostile = "*/ DROP TABLE bank_account; --"
    value = "100% */ -- ' \\"
    with CaptureQueriesContext(connection) as captured:
        status, headers, body = wsgi_request(
            f"/probe/odd*/{quote(hostile)}?q={quote(value)}", {"X-Request-ID": hostile}
        )
    assert status == 200
    assert body.decode() == value  # the parameter round-trips unchanged
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])  # not the hostile header
    statements = [q["sql"] for q in captured.captured_queries]
    assert statements
    for sql in statements:
        assert COMMENT.search(sql), sql
        assert "route='" in sql
    assert Account.objects.count() == 0  # the table is still there


@pytest.mark.django_db(transaction=True)
def test_percent_and_comment_markers_in_parameters_round_trip() -> None:
    with tag(route="100%/*odd*/"), connection.cursor() as cursor:
        cursor.execute("SELECT %s, %s", ["100%", "*/ --"])
        assert cursor.fetchone() == ("100%", "*/ --")
        cursor.execute("SELECT '50%'")  # no parameters: no interpolation by the driver
        assert cursor.fetchone()[0] == "50%"
        Account.objects.create(name="50% off */", balance=1)
        assert Account.objects.filter(name__contains="% off */").count() == 1


@pytest.mark.django_db(transaction=True)
def test_request_id_is_in_the_comment_only_when_opted_in() -> None:
    with CaptureQueriesContext(connection) as captured:
        _, headers, _ = wsgi_request("/probe/echo/?q=x", {"X-Request-ID": "req-42"})
    assert headers["X-Request-ID"] == "req-42"
    assert all("request_id" not in q["sql"] for q in captured.captured_queries)
    with (
        override_settings(DBPOOL_SQL_COMMENT_REQUEST_ID=True),
        CaptureQueriesContext(connection) as captured,
    ):
        wsgi_request("/probe/echo/?q=x", {"X-Request-ID": "req-42"})
    assert any("request_id='req-42'" in q["sql"] for q in captured.captured_queries)


@pytest.mark.django_db(transaction=True)
def test_async_requests_are_tagged_and_echo_the_request_id() -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    response = async_to_sync(AsyncClient().get)(
        "/probe/async-session/", headers={"X-Request-ID": "async-1"}
    )
    assert response.status_code == 200
    assert response["X-Request-ID"] == "async-1"


@pytest.mark.django_db(transaction=True)
def test_management_commands_are_tagged_with_their_name() -> None:
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        f"    c.execute({OWN_QUERY_TEXT[connection.vendor]!r})\n"
        "    print(c.fetchone()[0])\n"
    )
    out = processes.manage("shell", "--no-imports", "-c", code).stdout
    assert "command='shell'" in out, out


@pytest.mark.django_db(transaction=True)
def test_celery_tasks_are_tagged_with_their_name_and_only_while_they_run() -> None:
    # Celery's own task_prerun/task_postrun signals, sent around an eager run as a worker
    # sends them around each task; a real worker's tasks: tests/test_celery_worker.py.
    from celery import Celery

    app = Celery("tagging", fixups=())
    seen: list[str] = []

    @app.task(name="reports.nightly")
    def nightly() -> None:
        seen.append(own_query_text())
        seen.append(tagging.holder_info() or "")

    try:
        nightly.apply().get()
        with tag(route="export/"):
            nightly.apply().get()
            inside_route = own_query_text()
    finally:
        app.close()
    assert "task='reports.nightly'" in seen[0], seen
    assert "task=reports.nightly" in seen[1]
    # An eager run inside a tagged block keeps the block's tags, which come back after it.
    assert "task='reports.nightly'" in seen[2]
    assert f"route='{encoded('export/')}'" in seen[2]
    assert "task=" not in inside_route
    assert "route=" in inside_route
    assert tagging.current_tags() is None


def test_leak_warnings_name_the_holders_tags(caplog: pytest.LogCaptureFixture) -> None:
    from django_dbpool.pool import Pool
    from tests.pool.fakes import FakeAdapter, FakeDriver, closing

    driver = FakeDriver()
    pool = Pool(
        driver.connect,
        FakeAdapter(driver),
        {"LEAK_TIMEOUT": 0.01},
        holder_info=tagging.holder_info,
    )
    with closing(pool), caplog.at_level(logging.WARNING, logger="django_dbpool.pool"):
        with tag(route="leaky/<int:pk>/"):
            conn = pool.acquire()
        deadline = time.monotonic() + 30
        while not any("held for" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no leak warning"
            time.sleep(0.02)
        pool.release(conn)
    warning = next(r.getMessage() for r in caplog.records if "held for" in r.getMessage())
    assert "route=leaky/<int:pk>/" in warning


def test_pooled_connections_record_the_holders_tags() -> None:
    from django.db import connections

    assert connections["default"].pool._holder_info is tagging.holder_info


def test_a_bad_application_name_template_is_named() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(DBPOOL_APPLICATION_NAME="{project}:{worker}"),
        pytest.raises(ImproperlyConfigured, match=r"DBPOOL_APPLICATION_NAME='\{project\}:"),
    ):
        application_name("default")


@pytest.mark.django_db(transaction=True)
def test_an_application_name_of_ones_own_wins() -> None:
    from django.db.utils import ConnectionHandler

    config = {**connection.settings_dict, "OPTIONS": dict(connection.settings_dict["OPTIONS"])}
    if connection.vendor == "postgresql":
        config["OPTIONS"]["application_name"] = "billing-worker"
    handler = ConnectionHandler({"default": dict(config), "own": config})
    wrapper = handler["own"]
    try:
        with wrapper.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
                assert cursor.fetchone()[0] == "billing-worker"
            else:
                # No connection attributes through mysqlclient: the tag is in the comment.
                with tag(route="r"):
                    cursor.execute(OWN_QUERY_TEXT["mysql"])
                    assert f"app='{encoded(application_name('own'))}'" in cursor.fetchone()[0]
    finally:
        wrapper.close()
        wrapper.close_pool()


# -- executemany on MySQL -----------------------------------------------------------------------

mysql_only = pytest.mark.skipif(
    settings.DATABASE_VENDOR != "mysql", reason="mysqlclient's executemany batching"
)
ROWS = 1000


def com_insert(cursor: Any) -> int:
    """INSERT and REPLACE statements this session has run (a multi-row one counts once)."""
    cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_insert', 'Com_replace')")
    return sum(int(value) for _, value in cursor.fetchall())


@mysql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("verb", "tagged"),
    [
        ("INSERT", "INSERT {comment}"),
        ("  insert ignore", "  insert {comment} ignore"),
        ("REPLACE", "REPLACE {comment}"),
    ],
)
def test_executemany_inserts_stay_one_statement_with_tags_on(verb: str, tagged: str) -> None:
    # mysqlclient sends executemany("INSERT ... VALUES (%s, %s)", rows) as one multi-row
    # INSERT only when nothing follows the VALUES list: a comment appended there would
    # cost one round trip per row.
    rows = [(f"Row {i}", i) for i in range(ROWS)]
    with (
        tag(route="bulk/100%/"),  # a percent sign, which the driver must not interpolate
        CaptureQueriesContext(connection) as captured,
        connection.cursor() as cursor,
    ):
        before = com_insert(cursor)
        cursor.executemany(f"{verb} INTO bank_account (name, balance) VALUES (%s, %s)", rows)
        inserts = com_insert(cursor) - before
    assert inserts == 1
    # The comment right after the keyword, its percent signs doubled for the driver.
    (sql,) = [q["sql"] for q in captured.captured_queries if "INTO bank_account" in q["sql"]]
    app = encoded(connection.dbpool_app_tag()).replace("%", "%%")
    comment = f"/*app='{app}',route='bulk%%2F100%%25%%2F'*/"
    statement = tagged.format(comment=comment)
    assert sql == f"{ROWS} times: {statement} INTO bank_account (name, balance) VALUES (%s, %s)"
    assert Account.objects.count() == ROWS
    assert Account.objects.get(name="Row 999").balance == 999


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_bulk_create_is_one_statement_with_tags_on() -> None:
    # Django builds the multi-row INSERT itself and runs it with execute(): the comment at
    # the end does not change that.
    with tag(route="bulk/"), connection.cursor() as cursor:
        before = com_insert(cursor)
        Account.objects.bulk_create(Account(name=f"Row {i}", balance=i) for i in range(ROWS))
        inserts = com_insert(cursor) - before
    assert inserts == 1
    assert Account.objects.count() == ROWS
