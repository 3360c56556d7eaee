"""The Django app: ``"flow_tracker.contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig


class FlowTrackerConfig(AppConfig):
    """flow-tracker in a Django project: no tables, four permissions to grant.

    The label is ``flow_tracker``, so the permissions read
    ``flow_tracker.view_dashboard`` and so on, as Django names every app's.
    """

    name = "flow_tracker.contrib.django"
    label = "flow_tracker"
    verbose_name = "flow-tracker"
    default_auto_field = "django.db.models.AutoField"
