"""Settings of the test project; the environment tunes what the gunicorn tests need.

- ``WSGI_AFTER_DJANGO_DB_NAME``: the database (the test runner's test database
  when gunicorn serves the project during the tests).
- ``WSGI_AFTER_CONN_MAX_AGE`` and ``WSGI_AFTER_CONN_HEALTH_CHECKS``: as in Django.
- ``WSGI_AFTER_RUNNER=tasks``: ``after()`` callbacks go to the ``durable`` django.tasks
  backend (django-tasks-db), whose ``db_worker`` runs them.
- ``WSGI_AFTER_MIDDLEWARE``: ``missing`` leaves the middleware out, ``last`` puts it
  last (what the start-up line catches).
- ``WSGI_AFTER_DEFAULT_LOGGING=1``: no ``LOGGING`` setting, as ``startproject`` writes.
"""

from __future__ import annotations

import importlib.util
import os

SECRET_KEY = "wsgi-after-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.django_project.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "wsgi_after.django",
    "tests.django_project.shop",
    "django_tasks_db",  # the durable backend of the tasks runner's tests
]
if importlib.util.find_spec("django.tasks") is None:  # Django < 6.0: the backport
    INSTALLED_APPS.append("django_tasks")

# WSGI_AFTER_TASKS_DEFAULT=immediate: Django's ImmediateBackend (benchmarks/django_tasks.py).
_IMMEDIATE = (
    "django_tasks.backends.immediate.ImmediateBackend"
    if "django_tasks" in INSTALLED_APPS
    else "django.tasks.backends.immediate.ImmediateBackend"
)
TASKS = {
    "default": {
        "BACKEND": _IMMEDIATE
        if os.environ.get("WSGI_AFTER_TASKS_DEFAULT") == "immediate"
        else "wsgi_after.django.tasks.AfterResponseBackend"
    },
    "durable": {"BACKEND": "django_tasks_db.DatabaseBackend"},
}

MIDDLEWARE = [
    "wsgi_after.django.AfterMiddleware",
    "django.middleware.common.CommonMiddleware",
]
if os.environ.get("WSGI_AFTER_MIDDLEWARE") == "missing":
    MIDDLEWARE = MIDDLEWARE[1:]
elif os.environ.get("WSGI_AFTER_MIDDLEWARE") == "last":
    MIDDLEWARE = MIDDLEWARE[1:] + MIDDLEWARE[:1]


def _database(name: str, test_name: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "CONN_MAX_AGE": int(os.environ.get("WSGI_AFTER_CONN_MAX_AGE", "0")),
        "CONN_HEALTH_CHECKS": os.environ.get("WSGI_AFTER_CONN_HEALTH_CHECKS") == "1",
        # A name of our own: other projects' tests on this server use theirs.
        "TEST": {"NAME": test_name},
    }


# Test databases named per process: two test runs on one server (nox sessions, a developer's
# run beside CI's) never share, nor drop, each other's database.
_RUN = os.getpid()
DATABASES = {
    "default": _database(
        os.environ.get("WSGI_AFTER_DJANGO_DB_NAME", "test"), f"test_wsgi_after_django_{_RUN}"
    ),
    "other": _database("test", f"test_wsgi_after_django_other_{_RUN}"),
}

WSGI_AFTER: dict[str, object] = {
    "MAX_WORKERS": 4,
    "DRAIN_TIMEOUT": 10.0,
    "ALLOW": ["tests.django_project.views"],  # what the tasks runner may send
}
if os.environ.get("WSGI_AFTER_RUNNER") == "tasks":
    WSGI_AFTER.update(RUNNER="tasks", TASKS_BACKEND="durable")

if os.environ.get("WSGI_AFTER_DEFAULT_LOGGING") != "1":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "loggers": {"wsgi_after": {"handlers": ["console"], "level": "WARNING"}},
    }
