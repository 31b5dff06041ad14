"""Django's task framework (``django.tasks``, or the ``django-tasks`` backport), both ways.

After the response, on wsgi_after's runner::

    TASKS = {"default": {"BACKEND": "wsgi_after.django.tasks.AfterResponseBackend"}}

    send_welcome.enqueue(user.pk)  # in a view: runs once the response is sent

``after()`` callbacks on any django.tasks backend (durable with django-tasks-db)::

    WSGI_AFTER = {"RUNNER": "tasks", "TASKS_BACKEND": "durable", "ALLOW": ["shop.callbacks"]}

Modules: :mod:`~wsgi_after.django.tasks.backend` (:class:`AfterResponseBackend`),
:mod:`~wsgi_after.django.tasks.runner` (:class:`TasksRunner`),
:mod:`~wsgi_after.django.tasks.worker` (the task the backend's worker runs),
:mod:`~wsgi_after.django.tasks.envelope` (messages any JSON store keeps, NUL included),
:mod:`~wsgi_after.django.tasks.compat` (``django.tasks`` or ``django_tasks``).
"""

from .backend import AfterResponseBackend as AfterResponseBackend
from .backend import TaskCall as TaskCall
from .backend import TaskNotRun as TaskNotRun
from .runner import TasksRunner as TasksRunner

__all__ = ["AfterResponseBackend", "TaskCall", "TaskNotRun", "TasksRunner"]
