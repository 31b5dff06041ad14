"""``wsgi_after.uwsgi`` against a stand-in ``uwsgi`` module: the hooks and start-up lines.

The real servers are in ``tests/integration/test_uwsgi.py``; here, what cannot be
started on this machine (a uWSGI without Python threads) and the exact wiring.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
import typing as t

import pytest

from wsgi_after import lifecycle

GRACEFUL = b"unix_signal:15 gracefully_kill_them_all"


def load(
    monkeypatch: pytest.MonkeyPatch, *, has_threads: int = 1, **opt: t.Any
) -> tuple[types.ModuleType, types.ModuleType]:
    """Import ``wsgi_after.uwsgi`` afresh under a fake ``uwsgi`` (no uwsgidecorators)."""
    fake = types.ModuleType("uwsgi")
    fake.opt = {k.replace("_", "-"): v for k, v in opt.items()}  # type: ignore[attr-defined]
    fake.has_threads = has_threads  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    monkeypatch.setitem(sys.modules, "uwsgidecorators", None)  # import raises ImportError
    monkeypatch.delitem(sys.modules, "wsgi_after.uwsgi", raising=False)
    return importlib.import_module("wsgi_after.uwsgi"), fake


def test_threads_disabled_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hooks, _ = load(monkeypatch, has_threads=0, hook_master_start=[GRACEFUL])
    with caplog.at_level(logging.WARNING, logger="wsgi_after"):
        assert hooks.install() is True
        assert hooks.install() is False  # once per process
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "ERROR",
            "uWSGI runs without Python threads, so after() callbacks stall until the next"
            " request. Start uWSGI with '--enable-threads' (or '--threads N'),"
            " or upgrade to uWSGI 2.0.27 or later.",
        )
    ]


def test_brutal_stop_is_one_warning_unless_sigterm_is_graceful(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hooks, _ = load(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="wsgi_after"):
        hooks.install()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "SIGTERM on uWSGI 2.0 is a brutal reload, not a stop: the master stays up and"
            " kills its workers at once, and after() callbacks queued just before it are lost"
            " without a log line (so are those of a worker in a request on SIGINT, and on"
            " SIGTERM with '--die-on-term'). Add 'hook-master-start = unix_signal:15"
            " gracefully_kill_them_all' to the uWSGI config and stop uWSGI with SIGTERM.",
        )
    ]
    caplog.clear()
    hooks, _ = load(monkeypatch, hook_master_start=GRACEFUL)
    with caplog.at_level(logging.WARNING, logger="wsgi_after"):
        hooks.install()
    assert caplog.records == []


def test_hooks_chain_to_the_apps_own_and_call_the_lifecycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hooks, fake = load(monkeypatch, worker_reload_mercy=b"4", hook_master_start=[GRACEFUL])
    calls: list[object] = []
    fake.post_fork_hook = lambda: calls.append("app post_fork")  # type: ignore[attr-defined]
    fake.atexit = lambda: calls.append("app atexit")  # type: ignore[attr-defined]
    monkeypatch.setattr(lifecycle, "after_fork_in_child", lambda: calls.append("after_fork"))
    monkeypatch.setattr(lifecycle, "shutdown", lambda timeout=None: calls.append(timeout))
    hooks.install()
    fake.post_fork_hook()
    fake.atexit()
    assert calls == ["app post_fork", "after_fork", "app atexit", 3.0]  # mercy 4 s - 1 s


@pytest.mark.parametrize(
    ("opt", "budget"),
    [
        pytest.param({}, 59.0, id="default-mercy"),
        pytest.param({"worker_reload_mercy": b"10"}, 9.0, id="bytes"),
        pytest.param({"worker_reload_mercy": [b"30", b"2"]}, 1.0, id="last-wins"),
        pytest.param({"worker_reload_mercy": b"0"}, 0.0, id="never-negative"),
        pytest.param({"worker_reload_mercy": b"soon"}, 59.0, id="unreadable"),
    ],
)
def test_drain_budget_follows_worker_reload_mercy(
    monkeypatch: pytest.MonkeyPatch, opt: dict[str, t.Any], budget: float
) -> None:
    hooks, _ = load(monkeypatch, **opt)
    assert hooks.drain_budget() == budget
