"""The dashboard in a Django project: its users, groups and permissions decide who may do what.

Add ``"flow_tracker.contrib.django"`` to ``INSTALLED_APPS`` and run ``manage.py
migrate``: that creates no table, only four permissions to grant to users or
groups in the admin (``flow_tracker.view_dashboard``, ``view_payloads``,
``operate``, ``administer``; see :mod:`flow_tracker.contrib.django.models`).
Then serve the site with the dashboard under a prefix::

    # mysite/asgi.py
    application = mount(get_asgi_application(), "/jobs/")
    # mysite/wsgi.py
    application = wsgi_mount(get_wsgi_application(), "/jobs/")

A visitor who is not logged in is sent to ``LOGIN_URL``; a superuser is an
admin; anyone else gets the role of their permissions, or a 403 without any.
"""

from __future__ import annotations

from flow_tracker.contrib.django.mount import mount, wsgi_mount
from flow_tracker.contrib.django.users import principal_for_user, session_auth

__all__ = ["mount", "principal_for_user", "session_auth", "wsgi_mount"]
