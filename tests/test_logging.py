"""The 'wsgi_after' logger stays enabled whatever logging configuration comes after it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)


def test_django_logging_that_disables_existing_loggers_keeps_wsgi_after_logging() -> None:
    # A wsgi.py importing wsgi_after before django.setup(), and a LOGGING dict without
    # 'disable_existing_loggers': False (its default is True) (issue 21, item 8).
    code = """
        import django
        from django.conf import settings
        from wsgi_after import AfterMiddleware, InlineRunner, after

        def broken():
            raise ValueError("smtp down")

        def app(environ, start_response):
            after(broken)
            start_response("200 OK", [])
            return [b"ok"]

        app = AfterMiddleware(app, runner=InlineRunner())
        settings.configure(LOGGING={
            "version": 1,
            "handlers": {"err": {"class": "logging.StreamHandler"}},
            "root": {"handlers": ["err"], "level": "WARNING"},
        })
        django.setup()
        body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/signup"}, lambda s, h: None)
        body.close()
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Callback '__main__.broken' queued by 'GET /signup' raised ValueError." in result.stderr
