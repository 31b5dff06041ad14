"""The Django app ``wsgi_after.django``: registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class WsgiAfterConfig(AppConfig):
    """``INSTALLED_APPS = [..., "wsgi_after.django"]``: no models, only checks."""

    name = "wsgi_after.django"
    label = "wsgi_after"
    verbose_name = "wsgi_after"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers them)
