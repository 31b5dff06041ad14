"""``wsgi_after.gunicorn.install``: the hooks composed with a config file's own.

A real gunicorn runs them in ``tests/integration/test_lifecycle.py``.
"""

from __future__ import annotations

import typing as t

import pytest

from wsgi_after import gunicorn, lifecycle


def test_install_keeps_the_users_hooks_and_orders_them(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(lifecycle, "start", lambda: calls.append("start runners"))
    monkeypatch.setattr(lifecycle, "shutdown", lambda timeout: calls.append(f"drain {timeout}"))
    namespace: dict[str, t.Any] = {
        "post_fork": lambda server, worker: calls.append("user post_fork"),
        "worker_exit": lambda server, worker: calls.append("user worker_exit"),
    }
    gunicorn.install(namespace)
    server = type("Server", (), {"cfg": type("Config", (), {"graceful_timeout": 10})()})()
    namespace["post_fork"](server, None)
    namespace["worker_exit"](server, None)
    assert calls == ["user post_fork", "start runners", "drain 8.0", "user worker_exit"]
    assert namespace["child_exit"] is gunicorn.child_exit


def test_install_alone_adds_ours() -> None:
    namespace: dict[str, t.Any] = {}
    gunicorn.install(namespace)
    assert namespace == {
        "post_fork": gunicorn.post_fork,
        "worker_exit": gunicorn.worker_exit,
        "child_exit": gunicorn.child_exit,
    }
    gunicorn.install(namespace)  # twice: nothing doubles
    assert namespace["post_fork"] is gunicorn.post_fork


def test_install_refuses_a_hook_that_is_not_callable() -> None:
    with pytest.raises(TypeError) as raised:
        gunicorn.install({"worker_exit": "drain"})
    assert str(raised.value) == (
        "gunicorn hook 'worker_exit' is 'str', not a function. Define"
        " 'def worker_exit(server, worker): ...' before calling 'install(globals())'."
    )
