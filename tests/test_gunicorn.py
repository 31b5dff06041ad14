"""``wsgi_after.gunicorn.install``: the hooks composed with a config file's own.

A real gunicorn runs them in ``tests/integration/test_lifecycle.py``.
"""

from __future__ import annotations

import signal
import typing as t

import pytest

from wsgi_after import gunicorn, lifecycle


class Worker:
    """gunicorn's worker, as far as the hooks see it: its stop-signal handlers."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def handle_exit(self, sig: int, frame: t.Any) -> None:
        self.calls.append(f"gunicorn handle_exit {sig}")

    def handle_quit(self, sig: int, frame: t.Any) -> None:
        self.calls.append(f"gunicorn handle_quit {sig}")


def server_with(graceful_timeout: float) -> t.Any:
    return type(
        "Server", (), {"cfg": type("Config", (), {"graceful_timeout": graceful_timeout})()}
    )()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the hooks did: runners started, drains with their timeout to 0.1 s."""
    done: list[str] = []
    monkeypatch.setattr(gunicorn, "_kill_at", None)  # no stop signal seen yet
    monkeypatch.setattr(lifecycle, "start", lambda: done.append("start runners"))
    monkeypatch.setattr(lifecycle, "shutdown", lambda timeout: done.append(f"drain {timeout:.1f}"))
    return done


def test_install_keeps_the_users_hooks_and_orders_them(calls: list[str]) -> None:
    namespace: dict[str, t.Any] = {
        "post_fork": lambda server, worker: calls.append("user post_fork"),
        "worker_exit": lambda server, worker: calls.append("user worker_exit"),
    }
    gunicorn.install(namespace)
    server = server_with(10)
    namespace["post_fork"](server, None)
    namespace["worker_exit"](server, None)
    assert calls == ["user post_fork", "start runners", "drain 8.0", "user worker_exit"]
    assert namespace["child_exit"] is gunicorn.child_exit


def test_the_drain_deadline_counts_from_the_stop_signal(calls: list[str]) -> None:
    server, worker = server_with(10), Worker(calls)
    gunicorn.post_fork(server, worker)
    worker.handle_exit(signal.SIGTERM, None)  # gunicorn installs these after post_fork
    gunicorn.worker_exit(server, worker)
    assert calls[:2] == ["start runners", f"gunicorn handle_exit {signal.SIGTERM}"]
    assert calls[2] == "drain 8.0"  # 10 s from the signal, less the margin


def test_a_quick_shutdown_after_the_stop_signal_leaves_no_drain(calls: list[str]) -> None:
    """SIGQUIT during a graceful stop: gunicorn's master kills its workers 2 s later."""
    server, worker = server_with(30), Worker(calls)
    gunicorn.post_fork(server, worker)
    worker.handle_exit(signal.SIGTERM, None)
    worker.handle_quit(signal.SIGQUIT, None)
    gunicorn.worker_exit(server, worker)
    assert calls[1:] == [
        f"gunicorn handle_exit {signal.SIGTERM}",
        f"gunicorn handle_quit {signal.SIGQUIT}",
        "drain 0.0",
    ]


def test_a_first_sigquit_is_a_stop_with_graceful_timeout(calls: list[str]) -> None:
    """SIGQUIT or SIGINT to the master first: it waits graceful_timeout for its workers."""
    server, worker = server_with(30), Worker(calls)
    gunicorn.post_fork(server, worker)
    worker.handle_quit(signal.SIGINT, None)
    gunicorn.worker_exit(server, worker)
    assert calls[-1] == "drain 28.0"


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
