"""Views that queue callbacks; the callbacks write rows (across processes) or remember values.

``recorded`` and ``gate`` are for tests in the same process: a callback queued with
``?wait=1`` first waits (with a timeout) until the test sets ``gate``, which
shows that it runs after the response arrived.
"""

from __future__ import annotations

import functools
import threading
import typing as t

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)

from wsgi_after import after, outcome
from wsgi_after.django import after_commit

from .shop.models import Note

recorded: list[t.Any] = []
gate = threading.Event()
#: The TaskResults that the ``task`` view's enqueue() returned (tests in this process).
results: list[t.Any] = []


def remember(item: object, wait: bool = False) -> None:
    if wait and not gate.wait(10):
        raise TimeoutError("the test never opened the gate")
    recorded.append((item, outcome()))


def write_note(text: str) -> None:
    Note.objects.create(text=text, thread=threading.current_thread().name)


def write_note_locked(text: str) -> None:
    """Waits for the advisory lock the test holds, then writes."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("select pg_advisory_xact_lock(4242)")
        Note.objects.create(text=text, thread=threading.current_thread().name)


def explode() -> None:
    raise RuntimeError("the callback failed")


def remember_committed(text: str, wait: bool) -> None:
    remember((text, Note.objects.filter(text=f"{text}-row").exists()), wait)


async def remember_async(item: object) -> None:
    recorded.append((item, outcome()))


def count_rows(text: str) -> None:
    remember(Note.objects.filter(text=text).count())


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("select pg_backend_pid()")
        return int(cursor.fetchone()[0])


async def count_rows_async(text: str) -> None:
    """The async ORM: its queries run wherever asgiref sends thread-sensitive code."""
    count = await Note.objects.filter(text=text).acount()
    recorded.append((count, await sync_to_async(backend_pid)()))


def note(request: HttpRequest, text: str) -> HttpResponse:
    after(write_note, text)
    return HttpResponse("queued")


def locked_note(request: HttpRequest, text: str) -> HttpResponse:
    after(write_note_locked, text)
    return HttpResponse("queued")


def record(request: HttpRequest, text: str) -> HttpResponse:
    after(remember, text, wait="wait" in request.GET)
    return HttpResponse("recorded", status=201)


def fail(request: HttpRequest) -> HttpResponse:
    after(explode)
    after(remember, "after the failure")
    return HttpResponse("ok")


def boom(request: HttpRequest) -> HttpResponse:
    after(remember, "boom")
    raise ValueError("the view failed")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    after(remember, "stream")
    return StreamingHttpResponse(b"chunk %d\n" % i for i in range(3))


def file(request: HttpRequest) -> HttpResponseBase:
    after(remember, "file")
    return FileResponse(open(__file__, "rb"))


def commit(request: HttpRequest, text: str) -> HttpResponse:
    if "autocommit" in request.GET:  # no transaction: queued at once, like after()
        Note.objects.create(text=f"{text}-row")
        after_commit(remember_committed, text, wait=False)
        return HttpResponse("done")
    with transaction.atomic():
        Note.objects.create(text=f"{text}-row")
        after_commit(remember_committed, text, wait="wait" in request.GET)
        if "rollback" in request.GET:
            transaction.set_rollback(True)
    return HttpResponse("done")


def commit_async(request: HttpRequest, text: str) -> HttpResponse:
    with transaction.atomic():
        after_commit(remember_async, text)
    return HttpResponse("done")


def nested(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        after_commit(remember, "outer")
        try:
            with transaction.atomic():
                after_commit(remember, "inner, rolled back")
                raise LookupError("roll the savepoint back")
        except LookupError:
            pass
        after_commit(remember, "after the savepoint")
    return HttpResponse("done")


def other_db(request: HttpRequest) -> HttpResponse:
    with transaction.atomic(using="other"):
        with transaction.atomic():
            after_commit(remember, "default, rolled back")
            after_commit(remember, "other, inside default's rollback", using="other")
            transaction.set_rollback(True)
        after_commit(remember, "other", using="other")
    return HttpResponse("done")


def view_row(request: HttpRequest) -> HttpResponse:
    Note.objects.create(text="view-row")
    after(count_rows, "view-row")
    return HttpResponse("done")


def async_count(request: HttpRequest, text: str) -> HttpResponse:
    after(count_rows_async, text)
    return HttpResponse("queued")


def remember_lazily(item: object) -> t.Iterator[None]:
    """A generator function: its body runs only when iterated, never by a call."""
    recorded.append((item, None))
    yield


def commit_checked(request: HttpRequest, kind: str) -> HttpResponse:
    """``after_commit()`` calls that ``after()`` would refuse, then another on_commit hook."""
    with transaction.atomic():
        Note.objects.create(text=f"checked-{kind}")
        try:
            if kind == "json":
                after_commit(remember, object())  # a CeleryRunner cannot send it
            elif kind == "generator":  # calling it would only make a generator
                after_commit(functools.partial(remember_lazily, "never"))
            else:
                for i in range(3):  # past max_callbacks=2
                    after_commit(remember, i)
        except (TypeError, RuntimeError) as e:
            recorded.append((type(e).__name__, None))
        transaction.on_commit(lambda: recorded.append(("other hook", None)))
    return HttpResponse("done")


def enqueue(request: HttpRequest, name: str) -> HttpResponse:
    """Enqueues the task ``name`` of ``tasks`` between two ``after()`` callbacks."""
    from . import tasks  # the tasks import this module

    after(remember, "before", wait="wait" in request.GET)
    results.append(getattr(tasks, name).enqueue(request.GET.get("arg", "ada")))
    after(remember, "after")
    return HttpResponse("queued")
