"""The site's own pages beside the dashboard: the admin, a login page and one view."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.urls import path


def hello(request: HttpRequest) -> HttpResponse:
    """A page of the site, to show the mount leaves it alone."""
    return HttpResponse(f"hello from django, {request.user}")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", LoginView.as_view(template_name="admin/login.html"), name="login"),
    path("hello/", hello, name="hello"),
]
