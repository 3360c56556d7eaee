"""The test Django project, set up once per test run, and its users of every kind.

Django is configured once per process: the first caller of :func:`django_ready`
picks the SQLite file that holds Django's own tables (users, groups, sessions);
later callers share it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.contrib.auth.models import Permission

SETTINGS = "tests.support.django_project.settings"
PASSWORD = "correct horse battery staple"


def django_ready(directory: Path) -> None:
    """Django set up with the test project, its tables made (idempotent).

    The environment is left as it was: Django reads ``DJANGO_SETTINGS_MODULE``
    once, and a variable left behind would reach every worker process later
    tests start (Celery, for one, sets Django up in a worker that sees it).
    """
    import django
    from django.apps import apps
    from django.core.management import call_command

    if apps.ready:
        return
    chosen = {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "FLOW_TRACKER_TEST_DJANGO_DB": str(directory / "django.sqlite3"),
    }
    previous = {name: os.environ.get(name) for name in chosen}
    os.environ.update(chosen)
    try:
        django.setup()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    call_command("migrate", verbosity=0, interactive=False)


def dashboard_permission(codename: str) -> Permission:
    """The Django permission ``flow_tracker.<codename>``."""
    from django.contrib.auth.models import Permission

    found: Permission = Permission.objects.get(
        content_type__app_label="flow_tracker", codename=codename
    )
    return found


def make_users() -> dict[str, str]:
    """Users of every kind, each logged in once through Django's own ``Client.login``.

    Returns each user's ``Cookie`` header (``sessionid=…``), by user name:

    ``root`` (superuser), ``vera`` (group with ``view_dashboard``), ``rita``
    (``view_payloads`` granted to her directly), ``otto`` (group with ``operate``),
    ``adam`` (group with ``administer``, not a superuser), ``nora`` (no permission),
    ``ivan`` (an operator, logged in, then made inactive).
    """
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.test import Client

    def group(name: str, codename: str) -> Group:
        made: Group = Group.objects.get_or_create(name=name)[0]
        made.permissions.add(dashboard_permission(codename))
        return made

    viewers = group("dashboard viewers", "view_dashboard")
    operators = group("dashboard operators", "operate")
    admins = group("dashboard admins", "administer")
    cookies: dict[str, str] = {}

    def user(name: str, *groups: Group, superuser: bool = False) -> User:
        User.objects.filter(username=name).delete()
        made: User
        if superuser:
            made = User.objects.create_superuser(name, f"{name}@example.com", PASSWORD)
        else:
            made = User.objects.create_user(name, f"{name}@example.com", PASSWORD)
        made.groups.add(*groups)
        browser = Client()
        assert browser.login(username=name, password=PASSWORD)
        cookies[name] = (
            f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        return made

    user("root", superuser=True)
    user("vera", viewers)
    user("rita").user_permissions.add(dashboard_permission("view_payloads"))
    user("otto", operators)
    user("adam", admins)
    user("nora")
    ivan = user("ivan", operators)
    ivan.is_active = False
    ivan.save()
    return cookies
