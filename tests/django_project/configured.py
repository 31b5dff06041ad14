"""Importing this module configures Django with the test project's settings, once.

The test modules import it instead of exporting ``DJANGO_SETTINGS_MODULE``, which
every subprocess would inherit (other tests run pytest and Python programs of
their own). gunicorn gets the variable explicitly.
"""

from __future__ import annotations

import django
from django.conf import settings

from . import settings as project_settings

if not settings.configured:
    settings.configure(
        **{
            name: getattr(project_settings, name)
            for name in dir(project_settings)
            if name.isupper()
        }
    )
    django.setup()
