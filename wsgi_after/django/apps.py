"""The Django app ``wsgi_after.django``: the system checks, and what they would say at start-up.

Servers (gunicorn, uWSGI) never run system checks, so :meth:`WsgiAfterConfig.ready`
also logs a missing or misplaced middleware once (:mod:`wsgi_after.django.startup`).
"""

from __future__ import annotations

from django.apps import AppConfig


class WsgiAfterConfig(AppConfig):
    """``INSTALLED_APPS = [..., "wsgi_after.django"]``: no models; checks and a start-up line."""

    name = "wsgi_after.django"
    label = "wsgi_after"
    verbose_name = "wsgi_after"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers them)
        from .startup import report_placement

        report_placement()
