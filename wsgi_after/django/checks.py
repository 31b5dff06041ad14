"""System checks: a bad ``WSGI_AFTER`` value, and the middleware missing or not first.

Run by ``manage.py check``, ``runserver`` and the test runner once the app
``wsgi_after.django`` is in ``INSTALLED_APPS``; ``manage.py check --deploy`` adds
``wsgi_after.W001`` (test-only settings left in production).
"""

from __future__ import annotations

import typing as t

from django.conf import settings
from django.core import checks

from .conf import problems
from .placement import FIRST_HINT, middleware_problem


@checks.register()
def check_settings(app_configs: t.Any = None, **kwargs: t.Any) -> list[checks.CheckMessage]:
    """``wsgi_after.E001``: ``WSGI_AFTER`` has a bad key or value."""
    value = getattr(settings, "WSGI_AFTER", {})
    return [
        checks.Error(problem, hint="See the settings in wsgi_after's Django guide.",
                     id="wsgi_after.E001")
        for problem in problems(value)
    ]  # fmt: skip


@checks.register()
def check_tasks_backend(app_configs: t.Any = None, **kwargs: t.Any) -> list[checks.CheckMessage]:
    """``wsgi_after.E004``: ``RUNNER = "tasks"`` names a backend that ``TASKS`` lacks."""
    value = getattr(settings, "WSGI_AFTER", {})
    if not isinstance(value, dict) or value.get("RUNNER") != "tasks":
        return []
    alias = value.get("TASKS_BACKEND", "default")
    aliases = getattr(settings, "TASKS", None) or {}
    if alias in aliases:
        return []
    return [
        checks.Error(
            f"WSGI_AFTER['TASKS_BACKEND'] is {alias!r}, which is not an alias of the TASKS"
            f" setting ({sorted(aliases)}), so every request's callbacks would be lost.",
            hint="Add it to TASKS, or set WSGI_AFTER['TASKS_BACKEND'] to one of its aliases.",
            id="wsgi_after.E004",
        )
    ]


@checks.register()
def check_middleware(app_configs: t.Any = None, **kwargs: t.Any) -> list[checks.CheckMessage]:
    """``wsgi_after.E002``: the middleware is missing; ``wsgi_after.E003``: it is not first."""
    problem = middleware_problem(getattr(settings, "MIDDLEWARE", None) or [])
    if problem is None:
        return []
    check_id, message = problem
    return [checks.Error(message, hint=FIRST_HINT, id=check_id)]


@checks.register(deploy=True)
def check_deploy(app_configs: t.Any = None, **kwargs: t.Any) -> list[checks.CheckMessage]:
    """``wsgi_after.W001`` (``--deploy`` only): ``INLINE`` runs callbacks in the request."""
    value = getattr(settings, "WSGI_AFTER", {})
    if not isinstance(value, dict) or value.get("INLINE") is not True:
        return []
    return [
        checks.Warning(
            "WSGI_AFTER['INLINE'] is True: every request's callbacks run in the request,"
            " before its response is sent.",
            hint="INLINE is for tests and debugging: leave it out of production settings.",
            id="wsgi_after.W001",
        )
    ]
