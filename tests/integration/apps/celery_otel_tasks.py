"""The Celery worker of the OpenTelemetry test: ``celery_tasks``' app, with
:func:`wsgi_after.otel.instrument` and the SDK writing every finished span as one
JSON line to the file ``WSGI_AFTER_SPANS`` names.

Run as ``celery -A celery_otel_tasks worker``; the callbacks are ``celery_tasks``'
(the worker's allow list), the spans are this module's concern only.
"""

from __future__ import annotations

import importlib
import os

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from wsgi_after import otel

#: The app ``celery -A`` finds: ``celery_tasks``' (found on the worker's PYTHONPATH).
celery_app = importlib.import_module("celery_tasks").celery_app

spans = open(os.environ["WSGI_AFTER_SPANS"], "a", buffering=1)  # noqa: SIM115 (the worker's life)
provider = TracerProvider()
provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(out=spans, formatter=lambda span: span.to_json(indent=None) + "\n")
    )
)
otel.instrument(tracer_provider=provider)
