"""The unmanaged model that holds the dashboard's four permissions (no table is made)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    """Creates no table; Django's post-migrate step creates the permissions."""

    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Dashboard",
            fields=[
                (
                    "id",
                    models.AutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "verbose_name": "flow-tracker dashboard",
                "permissions": (
                    (
                        "view_dashboard",
                        "Can view the flow-tracker dashboard (no payload values)",
                    ),
                    ("view_payloads", "Can view payload values in the flow-tracker dashboard"),
                    ("operate", "Can reap, requeue, retry, resolve, cancel and start jobs"),
                    ("administer", "Can do everything in the flow-tracker dashboard"),
                ),
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]
