"""Glue for host frameworks: :mod:`flow_tracker.contrib.django` mounts the dashboard in Django."""
