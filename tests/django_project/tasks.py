"""The test project's django.tasks tasks, on its ``default`` backend: ``AfterResponseBackend``.

Each task records what it saw in ``views.recorded`` (tests in this process) or
writes a ``Note`` row (across processes).
"""

from __future__ import annotations

import threading
import time
import typing as t

from wsgi_after.django.tasks.compat import TaskContext, task

from . import views
from .shop.models import Note


@task
def greet(name: str) -> str:
    """Records its name, the request's outcome and its thread; returns a greeting."""
    views.remember((name, threading.current_thread().name))
    return f"hello {name}"


@task
def write_note(text: str) -> None:
    """Writes a row, in the database of the process that runs it."""
    Note.objects.create(text=text, thread=threading.current_thread().name)


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def with_context(context: TaskContext[..., t.Any], name: str) -> list[object]:
    """Returns what the context says: its result's id and the attempt."""
    return [context.task_result.id, context.attempt, name]


@task
async def greet_async(name: str) -> str:
    views.remember((name, "async"))
    return f"hello {name}"


@task
def write_note_locked(text: str) -> None:
    """Waits for the advisory lock the test holds, then writes a row."""
    views.write_note_locked(text)


@task
def nap(seconds: str) -> None:
    """Stands for slow work (an SMTP call): sleeps ``seconds`` (benchmarks/django_tasks.py)."""
    time.sleep(float(seconds))
