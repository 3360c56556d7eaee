"""The dashboard in a real Django project, through the ASGI mount and the WSGI mount.

Django's own users, groups, permissions and session cookies decide who gets in
and what they may do; the admin and the site's other pages answer as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from starlette.requests import Request
from starlette.testclient import TestClient

import flow_tracker
from flow_tracker.errors import UsageError
from flow_tracker.permissions import Principal
from flow_tracker.web.security import CSRF_COOKIE, CSRF_FIELD
from tests.contrib.conftest import silence
from tests.web.conftest import Sample

ORIGIN = "http://testserver"
LOGIN = "/accounts/login/"
pytestmark = pytest.mark.usefixtures("site_users")


def _asgi_site(sample: Sample, **kwargs: Any) -> tuple[httpx.Client, Any]:
    from django.core.asgi import get_asgi_application

    from flow_tracker.contrib.django import mount

    application = mount(get_asgi_application(), "/jobs/", database_url=sample.url, **kwargs)
    client = TestClient(application, base_url=ORIGIN, follow_redirects=False)
    return client, application.dashboard


def _wsgi_site(sample: Sample, **kwargs: Any) -> tuple[httpx.Client, Any]:
    from django.core.wsgi import get_wsgi_application

    from flow_tracker.contrib.django import wsgi_mount

    application = wsgi_mount(get_wsgi_application(), "/jobs/", database_url=sample.url, **kwargs)
    transport = httpx.WSGITransport(app=application)
    client = httpx.Client(transport=transport, base_url=ORIGIN, follow_redirects=False)
    # wsgi_mount -> a2wsgi's ASGIMiddleware -> the site-root wrapper -> the dashboard
    return client, application.dashboard.app.dashboard  # type: ignore[attr-defined]


SITES: dict[str, Callable[..., tuple[httpx.Client, Any]]] = {
    "asgi": _asgi_site,
    "wsgi": _wsgi_site,
}


@pytest.fixture(params=sorted(SITES))
def site(request: pytest.FixtureRequest, sample: Sample) -> Iterator[httpx.Client]:
    """A client of the Django site, dashboard at ``/jobs/``, served over ASGI or WSGI."""
    client, dashboard = SITES[request.param](sample)
    # Not `with client`: that would send a lifespan event, which Django's handler
    # refuses (servers such as uvicorn go on without it); the mount passes it on.
    yield client
    client.close()
    dashboard.state.dashboard.store.dispose()


def _as(site_users: dict[str, str], name: str, **extra: str) -> dict[str, str]:
    """Request headers of ``name``'s browser: their session cookie and ``extra`` cookies."""
    cookie = "; ".join([site_users[name], *(f"{k}={v}" for k, v in extra.items())])
    return {"cookie": cookie}


def _links(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="(/[^"]*)"', html)


def _csrf(site: httpx.Client, headers: dict[str, str]) -> tuple[str, str]:
    """The dashboard's CSRF cookie as set (with its attributes), and its token."""
    page = site.get("/jobs/health", headers=headers)
    assert page.status_code == 200
    cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith(CSRF_COOKIE))
    return cookie, cookie.split(";")[0].split("=", 1)[1]


# -- who gets in ----------------------------------------------------------------------


def test_the_migration_gives_four_permissions_and_no_table() -> None:
    from django.contrib.auth.models import Permission
    from django.db import connection

    codenames = set(
        Permission.objects.filter(content_type__app_label="flow_tracker").values_list(
            "codename", flat=True
        )
    )
    assert codenames == {"view_dashboard", "view_payloads", "operate", "administer"}
    assert not [t for t in connection.introspection.table_names() if "dashboard" in t]


def test_an_anonymous_visitor_is_sent_to_log_in_and_back(site: httpx.Client) -> None:
    response = site.get("/jobs/processes?status=failed&name=Charge Card")
    assert response.status_code == 302
    # LOGIN_URL is the pattern's name "login"; next is the whole path, prefix and query.
    assert response.headers["location"] == (
        f"{LOGIN}?next=/jobs/processes%3Fstatus%3Dfailed%26name%3DCharge%2520Card"
    )
    login_page = site.get(response.headers["location"])
    assert login_page.status_code == 200 and "csrfmiddlewaretoken" in login_page.text


def test_an_inactive_user_is_sent_to_log_in(site: httpx.Client, site_users: dict[str, str]) -> None:
    response = site.get("/jobs/", headers=_as(site_users, "ivan"))
    assert response.status_code == 302
    assert response.headers["location"] == f"{LOGIN}?next=/jobs/"


@pytest.mark.parametrize(
    "cookie",
    [
        "sessionid=" + "a" * 10_000,
        "sessionid=abc\x00def",
        "sessionid=<script>alert(1)</script>",
        "sessionid=",
    ],
)
def test_a_forged_session_cookie_is_no_user(site: httpx.Client, cookie: str) -> None:
    response = site.get("/jobs/", headers={"cookie": cookie})
    assert response.status_code == 302 and response.headers["location"].startswith(LOGIN)


def test_a_non_ascii_session_cookie_is_no_user(sample: Sample) -> None:
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    from flow_tracker.contrib.django import mount, wsgi_mount

    cookie = "sessionid=ünïcode"
    asgi = mount(get_asgi_application(), "/jobs/", database_url=sample.url)
    over_asgi = TestClient(asgi, follow_redirects=False).get(
        "/jobs/", headers={"cookie": cookie.encode("utf-8")}
    )
    assert over_asgi.status_code == 302
    assert over_asgi.headers["location"] == f"{LOGIN}?next=/jobs/"
    # A WSGI server hands the header's UTF-8 bytes over as latin-1 text (PEP 3333).
    wsgi = wsgi_mount(get_wsgi_application(), "/jobs/", database_url=sample.url)
    environ = EnvironBuilder(
        "/jobs/", headers=[("Cookie", cookie.encode("utf-8").decode("latin-1"))]
    ).get_environ()
    _, status, headers = run_wsgi_app(wsgi, environ)
    assert status.startswith("302") and headers["Location"] == f"{LOGIN}?next=/jobs/"
    asgi.dashboard.state.dashboard.store.dispose()
    wsgi.dashboard.app.dashboard.state.dashboard.store.dispose()  # type: ignore[attr-defined]


def test_a_user_without_a_dashboard_permission_is_forbidden(
    site: httpx.Client, site_users: dict[str, str]
) -> None:
    for path in ("/jobs/", "/jobs/processes", "/jobs/api/processes"):
        assert site.get(path, headers=_as(site_users, "nora")).status_code == 403, path


def test_django_users_map_to_roles_through_groups_and_their_own_permissions() -> None:
    from django.contrib.auth.models import AnonymousUser, User

    from flow_tracker.contrib.django import principal_for_user

    roles = {
        name: getattr(principal_for_user(User.objects.get(username=name)), "role", None)
        for name in ("root", "adam", "otto", "rita", "vera", "nora", "ivan")
    }
    assert roles == {
        "root": "admin",  # a superuser, without any of the four permissions
        "adam": "admin",  # administer, through a group
        "otto": "operator",  # operate, through a group
        "rita": "reader",  # view_payloads, granted to her alone
        "vera": "viewer",  # view_dashboard, through a group
        "nora": None,
        "ivan": None,  # inactive
    }
    assert principal_for_user(AnonymousUser()) is None
    otto = principal_for_user(User.objects.get(username="otto"))
    assert otto is not None and otto.name == "otto" and otto.via == "hook"


# -- what each may do ---------------------------------------------------------------


def test_a_viewer_reads_pages_but_every_action_is_refused(
    site: httpx.Client, site_users: dict[str, str], sample: Sample
) -> None:
    vera = _as(site_users, "vera")
    for path in ("/jobs/", "/jobs/processes", f"/jobs/processes/{sample.imported}", "/jobs/health"):
        assert site.get(path, headers=vera).status_code == 200, path
    silence(sample.running)
    _, token = _csrf(site, vera)
    refused = site.post(
        "/jobs/health/reap",
        data={CSRF_FIELD: token},
        headers={**_as(site_users, "vera", **{CSRF_COOKIE: token}), "origin": ORIGIN},
    )
    assert refused.status_code == 403
    record = flow_tracker.get_process(sample.running)
    assert record is not None and record.status.value == "running"
    assert site.get("/jobs/cleanup", headers=vera).status_code == 403


def test_an_operator_reaps_with_the_dashboards_csrf_token(
    site: httpx.Client, site_users: dict[str, str], sample: Sample
) -> None:
    silence(sample.running)
    otto = _as(site_users, "otto")
    cookie, token = _csrf(site, otto)
    # The dashboard's cookie is its own: its name is not Django's csrftoken, its path the mount's.
    assert "path=/jobs/" in cookie.lower() and "samesite=strict" in cookie.lower()
    with_cookie = _as(site_users, "otto", **{CSRF_COOKIE: token})
    assert (
        f'name="{CSRF_FIELD}" value="{token}"' in site.get("/jobs/health", headers=with_cookie).text
    )
    without_token = site.post("/jobs/health/reap", data={}, headers={**otto, "origin": ORIGIN})
    assert without_token.status_code == 403
    response = site.post(
        "/jobs/health/reap", data={CSRF_FIELD: token}, headers={**with_cookie, "origin": ORIGIN}
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/jobs/health?")
    assert "marked 1 process lost" in site.get(response.headers["location"], headers=otto).text
    record = flow_tracker.get_process(sample.running)
    assert record is not None and record.status.value == "lost"
    # Deleting history is an admin's.
    assert site.get("/jobs/cleanup", headers=otto).status_code == 403


def test_a_superuser_and_an_administrator_may_clean_up(
    site: httpx.Client, site_users: dict[str, str]
) -> None:
    for name in ("root", "adam"):
        assert site.get("/jobs/cleanup", headers=_as(site_users, name)).status_code == 200, name


def test_every_link_of_the_pages_stays_under_the_prefix(
    site: httpx.Client, site_users: dict[str, str], sample: Sample
) -> None:
    root = _as(site_users, "root")
    for page in ("/jobs/", "/jobs/processes", f"/jobs/processes/{sample.imported}", "/jobs/health"):
        response = site.get(page, headers=root)
        assert response.status_code == 200, page
        links = _links(response.text)
        assert links, page
        assert all(link.startswith("/jobs/") for link in links), (page, links)
    for link in sorted(set(_links(site.get("/jobs/processes", headers=root).text)))[:20]:
        assert site.get(link.replace("&amp;", "&"), headers=root).status_code == 200, link


def test_the_prefix_without_its_slash_redirects_to_it(site: httpx.Client) -> None:
    response = site.get("/jobs?window=1h")
    assert response.status_code == 307
    assert response.headers["location"] == "/jobs/?window=1h"
    assert site.get("/jobsearch/").status_code == 404  # Django's: not the dashboard's prefix


# -- the rest of the site -------------------------------------------------------------


def test_the_django_admin_and_views_answer_as_before(
    site: httpx.Client, site_users: dict[str, str]
) -> None:
    anonymous_admin = site.get("/admin/")
    assert anonymous_admin.status_code == 302
    assert anonymous_admin.headers["location"] == "/admin/login/?next=/admin/"
    admin = site.get("/admin/", headers=_as(site_users, "root"))
    assert admin.status_code == 200 and "Site administration" in admin.text
    # The dashboard's permissions are listed in the admin, as any app's.
    group_form = site.get("/admin/auth/group/add/", headers=_as(site_users, "root"))
    assert "Can reap, requeue, retry, resolve, cancel and start jobs" in group_form.text
    hello = site.get("/hello/", headers=_as(site_users, "vera"))
    assert hello.status_code == 200 and hello.text == "hello from django, vera"
    # None of the dashboard's headers leak onto the site's pages.
    assert CSRF_COOKIE not in "".join(hello.headers.get_list("set-cookie"))
    assert "content-security-policy" not in hello.headers


def test_logging_in_through_the_site_opens_the_dashboard(site: httpx.Client) -> None:
    from django.conf import settings

    sent_away = site.get("/jobs/processes")
    form = site.get(sent_away.headers["location"])
    django_csrf = form.cookies[settings.CSRF_COOKIE_NAME]
    field = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert field
    logged_in = site.post(
        sent_away.headers["location"],
        data={
            "csrfmiddlewaretoken": field.group(1),
            "username": "otto",
            "password": "correct horse battery staple",
        },
        headers={"cookie": f"{settings.CSRF_COOKIE_NAME}={django_csrf}", "origin": ORIGIN},
    )
    assert logged_in.status_code == 302
    assert logged_in.headers["location"] == "/jobs/processes"
    session = logged_in.cookies[settings.SESSION_COOKIE_NAME]
    page = site.get(
        "/jobs/processes?name=ImportOrders",
        headers={"cookie": f"{settings.SESSION_COOKIE_NAME}={session}"},
    )
    assert page.status_code == 200 and "ImportOrders" in page.text


# -- the ORM from async code ----------------------------------------------------------


def test_the_orm_on_the_event_loop_is_refused_so_the_hook_runs_it_in_a_thread(
    sample: Sample, caplog: pytest.LogCaptureFixture
) -> None:
    """Django refuses the ORM on the event loop; a hook that respects it works."""
    from django.contrib.auth.models import User
    from django.core.asgi import get_asgi_application

    from flow_tracker.contrib.django import mount, principal_for_user

    def on_the_loop(request: Request) -> Principal | None:
        return principal_for_user(User.objects.get(username="otto"))

    async def in_a_thread(request: Request) -> Principal | None:
        return await sync_to_async(on_the_loop)(request)

    seen: dict[str, int] = {}
    for name, hook in (("loop", on_the_loop), ("thread", in_a_thread)):
        application = mount(get_asgi_application(), "/jobs/", database_url=sample.url, auth=hook)
        seen[name] = TestClient(application).get("/jobs/").status_code
        application.dashboard.state.dashboard.store.dispose()
    # On the loop: SynchronousOnlyOperation, which the dashboard answers with 403.
    assert seen == {"loop": 403, "thread": 200}
    assert "SynchronousOnlyOperation" in caplog.text


# -- where the site itself is served under a root path ---------------------------------


def test_under_a_root_path_links_and_the_login_url_keep_it(
    sample: Sample, site_users: dict[str, str]
) -> None:
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    from flow_tracker.contrib.django import mount, wsgi_mount

    asgi = mount(get_asgi_application(), "/jobs/", database_url=sample.url)
    wsgi = wsgi_mount(get_wsgi_application(), "/jobs/", database_url=sample.url)
    # An ASGI server puts the root path in front of the path; WSGI keeps it in SCRIPT_NAME.
    clients: list[tuple[str, httpx.Client, str]] = [
        (
            "asgi",
            TestClient(asgi, base_url=ORIGIN, root_path="/site", follow_redirects=False),
            "/site/jobs/health",
        ),
        (
            "wsgi",
            httpx.Client(
                transport=httpx.WSGITransport(app=wsgi, script_name="/site"),
                base_url=ORIGIN,
                follow_redirects=False,
            ),
            "/jobs/health",
        ),
    ]
    for name, client, health in clients:
        anonymous = client.get(health)
        assert anonymous.status_code == 302, name
        assert anonymous.headers["location"] == "/site/accounts/login/?next=/site/jobs/health"
        page = client.get(health, headers=_as(site_users, "root"))
        assert page.status_code == 200, name
        links = _links(page.text)
        assert links and all(link.startswith("/site/jobs/") for link in links), (name, links)
        cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith(CSRF_COOKIE))
        assert "path=/site/jobs/" in cookie.lower(), name
    asgi.dashboard.state.dashboard.store.dispose()
    wsgi.dashboard.app.dashboard.state.dashboard.store.dispose()  # type: ignore[attr-defined]


# -- mistakes -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/", "", "jobs", "/jobs/../admin", "/jo bs", "/jobs?x=1", 7])
def test_a_prefix_that_is_no_plain_path_is_refused(prefix: Any) -> None:
    from django.core.asgi import get_asgi_application

    from flow_tracker.contrib.django import mount

    with pytest.raises(UsageError, match="prefix"):
        mount(get_asgi_application(), prefix)
