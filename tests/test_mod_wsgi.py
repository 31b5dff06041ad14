"""``wsgi_after.mod_wsgi`` against a stand-in ``mod_wsgi`` module (real Apache: integration)."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import types
import typing as t

import pytest

from wsgi_after import lifecycle


def load(monkeypatch: pytest.MonkeyPatch, fake: types.ModuleType | None) -> types.ModuleType:
    if fake is None:
        monkeypatch.delitem(sys.modules, "mod_wsgi", raising=False)
    else:
        monkeypatch.setitem(sys.modules, "mod_wsgi", fake)
    monkeypatch.delitem(sys.modules, "wsgi_after.mod_wsgi", raising=False)
    return importlib.import_module("wsgi_after.mod_wsgi")


def test_subscribes_once_and_drains_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    subscribed: list[t.Callable[..., None]] = []
    fake = types.ModuleType("mod_wsgi")
    fake.subscribe_shutdown = subscribed.append  # type: ignore[attr-defined]
    hooks = load(monkeypatch, fake)
    assert hooks.install() is True
    assert hooks.install() is False
    assert subscribed == [hooks.on_shutdown]
    timeouts: list[float | None] = []
    results = iter([True, False])

    def shutdown(timeout: float | None = None) -> bool:
        timeouts.append(timeout)
        return next(results)

    monkeypatch.setattr(lifecycle, "shutdown", shutdown)
    with caplog.at_level(logging.ERROR, logger="wsgi_after"):
        subscribed[0]("process_stopping", shutdown_reason="shutdown_signal")
        assert caplog.records == []
        subscribed[0]("process_stopping", shutdown_reason="maximum_requests")
    assert timeouts == [2.0, 2.0]
    [record] = caplog.records
    assert record.getMessage() == (
        "mod_wsgi stopped the process (maximum_requests) before every after() callback ran"
        " within 2.0 s; those that did not are logged above by name."
    )


def test_does_nothing_outside_mod_wsgi(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(monkeypatch, None).install() is False
    # The pip package 'mod_wsgi' imports outside Apache, without the server's API.
    assert load(monkeypatch, types.ModuleType("mod_wsgi")).install() is False


def test_importing_the_package_installs_nothing_the_first_middleware_does() -> None:
    # In a fresh interpreter with a stand-in mod_wsgi: 'import wsgi_after' has no side
    # effect; the first AfterMiddleware (or registered runner) subscribes, once.
    script = """
import sys, types
subscribed = []
fake = types.ModuleType("mod_wsgi")
fake.subscribe_shutdown = subscribed.append
sys.modules["mod_wsgi"] = fake
import wsgi_after
print(len(subscribed), "wsgi_after.mod_wsgi" in sys.modules)
wsgi_after.AfterMiddleware(lambda environ, start_response: [], runner=wsgi_after.InlineRunner())
wsgi_after.AfterMiddleware(lambda environ, start_response: [], runner=wsgi_after.InlineRunner())
print(len(subscribed))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.split() == ["0", "False", "1"]
