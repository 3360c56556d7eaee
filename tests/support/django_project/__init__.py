"""A small Django project with the dashboard mounted at ``/jobs/``, for the tests.

Django's own tables live in the SQLite file ``FLOW_TRACKER_TEST_DJANGO_DB`` names
(see :func:`tests.support.django_site.django_ready`).
"""
