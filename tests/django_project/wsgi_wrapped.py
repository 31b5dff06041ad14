"""The same application also wrapped with the core middleware: callbacks must not double."""

from __future__ import annotations

from wsgi_after import AfterMiddleware

from .wsgi import application as django_application

application = AfterMiddleware(django_application, max_workers=2)
