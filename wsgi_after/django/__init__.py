"""Django integration: ``after()`` in views, with database hygiene and ``after_commit``.

::

    INSTALLED_APPS = [..., "wsgi_after.django"]
    MIDDLEWARE = ["wsgi_after.django.AfterMiddleware", ...]  # first
    WSGI_AFTER = {"MAX_WORKERS": 8}  # optional: MAX_PENDING, ON_FULL, DRAIN_TIMEOUT, INLINE,
    # RUNNER, TASKS_BACKEND, ALLOW (see wsgi_after.django.tasks)

    from wsgi_after import after
    from wsgi_after.django import after_commit

    def signup(request):
        user = User.objects.create(email=request.POST["email"])
        after(send_welcome_email, user.email)  # values, not the request
        return HttpResponse("ok")

Modules: :mod:`~wsgi_after.django.middleware` (the chain per request),
:mod:`~wsgi_after.django.database` (connections around callbacks),
:mod:`~wsgi_after.django.transaction` (``after_commit``),
:mod:`~wsgi_after.django.conf` (the setting), :mod:`~wsgi_after.django.runner`
(where chains run), :mod:`~wsgi_after.django.testing` and
:mod:`~wsgi_after.django.inline` (tests), :mod:`~wsgi_after.django.checks`, and
:mod:`~wsgi_after.django.tasks` (Django's task framework, both ways; imported only when used).
"""

from .middleware import AfterMiddleware as AfterMiddleware
from .runner import get_runner as get_runner
from .testing import CapturedCallback as CapturedCallback
from .testing import capture_after_callbacks as capture_after_callbacks
from .transaction import after_commit as after_commit

__all__ = [
    "AfterMiddleware",
    "CapturedCallback",
    "after_commit",
    "capture_after_callbacks",
    "get_runner",
]
