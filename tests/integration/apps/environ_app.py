"""A plain WSGI app whose callbacks report which request they see, under load.

Each request waits at a barrier until BARRIER requests are in flight at once (so a
server that reuses its environ dicts really does), queues a callback that reads its
chain's environ after the response has closed, and one that fails, so that the
library's own log line names the request. Rows go to ``seen`` in ENVIRON_DB.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
import typing as t

from wsgi_after import AfterMiddleware, after, current_chain

DB = os.environ["ENVIRON_DB"]
barrier = threading.Barrier(int(os.environ["BARRIER"]), timeout=30)

with contextlib.closing(sqlite3.connect(DB)) as db, db:
    db.execute("pragma journal_mode=wal")
    db.execute("create table if not exists seen (sent, path, header)")


def record(sent: str) -> None:
    time.sleep(random.random() * 0.05)  # let the server reuse the environ meanwhile
    chain = current_chain()
    environ = chain.environ if chain is not None and chain.environ is not None else {}
    row = (sent, environ.get("PATH_INFO", "?"), environ.get("HTTP_X_USER", "?"))
    with contextlib.closing(sqlite3.connect(DB, timeout=30)) as db, db:
        db.execute("insert into seen values (?, ?, ?)", row)


def fail(sent: str) -> None:
    raise RuntimeError(f"failing on purpose for {sent}")


def view(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
    user = environ["HTTP_X_USER"]
    after(record, user)
    after(fail, user)
    barrier.wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [user.encode()]


app = AfterMiddleware(view, max_workers=8)
