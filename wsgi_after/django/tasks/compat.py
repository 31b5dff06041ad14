"""Django's task framework from where it is: ``django.tasks`` (Django 6.0+) or the backport.

The ``django-tasks`` package backports DEP 14 to Django 4.2-5.2 as ``django_tasks``,
with two names of its own: ``InvalidTaskError`` (Django: ``InvalidTask``) and
``TaskResultDoesNotExist`` lives in the same place. Everything else of
:mod:`wsgi_after.django.tasks` imports the framework from here, so the rest of
the code reads the same on both.
"""

from __future__ import annotations

import importlib.util
import typing as t

if t.TYPE_CHECKING or importlib.util.find_spec("django.tasks") is not None:
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import DEFAULT_TASK_PRIORITY, Task, TaskError
    from django.tasks.exceptions import InvalidTask
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    #: The module users import the framework from (for messages).
    FRAMEWORK = "django.tasks"
else:  # pragma: no cover - Django < 6.0, with the backport installed
    try:
        from django_tasks import (
            TaskContext,
            TaskResult,
            TaskResultStatus,
            task,
            task_backends,
        )
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import DEFAULT_TASK_PRIORITY, Task, TaskError
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as e:
        raise ImportError(
            "'wsgi_after.django.tasks' needs Django's task framework: use Django 6.0 or"
            " later, or install the backport: pip install 'wsgi-after[django-tasks]'."
        ) from e

    FRAMEWORK = "django_tasks"

__all__ = [
    "DEFAULT_TASK_PRIORITY",
    "FRAMEWORK",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultStatus",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
