"""The middleware's placement, judged when the app loads: servers never run system checks.

``manage.py check``, ``runserver`` and the test runner run the system checks;
gunicorn, uWSGI and mod_wsgi do not. With the middleware missing, every view that
calls ``after()`` answers 500 (and, with ``DEBUG = False`` and Django's default
logging, nothing says why); placed below other middleware, nothing is said at
all. So :func:`report_placement` logs the check's message, once per process, on
the ``wsgi_after`` logger at ERROR, naming the fix. The app config calls it as
Django starts (``INSTALLED_APPS``), and the middleware calls it when Django loads
it (a project without the app)::

    ERROR 'wsgi_after.django.AfterMiddleware' is not in MIDDLEWARE, ... Put ... first ...
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

from .placement import FIRST_HINT, middleware_problem

logger = logging.getLogger("wsgi_after")

_lock = threading.Lock()
_reported: list[str] = []


def report_placement() -> None:
    """Log, once per process, what ``wsgi_after.E002``/``E003`` would say, if anything."""
    problem = middleware_problem(getattr(settings, "MIDDLEWARE", None) or [])
    if problem is None:
        return
    check_id, message = problem
    with _lock:
        if _reported:
            return
        _reported.append(check_id)
    logger.error(
        "%s %s (System check %s; run 'manage.py check --deploy' in CI to catch it before"
        " deploying.)",
        message,
        FIRST_HINT,
        check_id,
    )
