# A gunicorn.conf.py with the user's own hooks, composed with wsgi_after's (the README).
import os
import typing as t

from wsgi_after.gunicorn import install


def note(line: str) -> None:
    with open(os.environ["USER_HOOKS_LOG"], "a") as log:
        log.write(line + "\n")


def post_fork(server: t.Any, worker: t.Any) -> None:
    note("user post_fork")


def worker_exit(server: t.Any, worker: t.Any) -> None:
    note("user worker_exit")


install(globals())
