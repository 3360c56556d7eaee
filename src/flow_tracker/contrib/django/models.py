"""The permissions a Django project grants to let its users into the dashboard.

There is no table: the model is unmanaged and exists so that Django creates the
four permissions (``manage.py migrate``), which the admin then lists for users
and groups like any app's. Each includes the ones above it in the list:

* ``flow_tracker.view_dashboard``: the pages, without payload values (viewer);
* ``flow_tracker.view_payloads``: also metadata values, arguments, results (reader);
* ``flow_tracker.operate``: also reap, requeue, retry, resolve, cancel, start (operator);
* ``flow_tracker.administer``: everything, the clean-up and the audit log too (admin).

A superuser is an admin without any of them.
"""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    """Holds the permissions; never stored (``managed = False``, no table)."""

    class Meta:
        """Unmanaged, with the four permissions and none of Django's default ones."""

        managed = False
        # No add/change/delete/view permissions: there is nothing to add or change.
        default_permissions = ()
        permissions = (
            ("view_dashboard", "Can view the flow-tracker dashboard (no payload values)"),
            ("view_payloads", "Can view payload values in the flow-tracker dashboard"),
            ("operate", "Can reap, requeue, retry, resolve, cancel and start jobs"),
            ("administer", "Can do everything in the flow-tracker dashboard"),
        )
        verbose_name = "flow-tracker dashboard"
