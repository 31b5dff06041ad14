"""The pytest plugin's fixtures, run in a pytest of their own (pytester)."""

from __future__ import annotations

import pytest

from wsgi_after import events
from wsgi_after.pytest_plugin import _InlineCollector

pytest_plugins = ["pytester"]

APP = """
import threading
import pytest
from flask import Flask
from wsgi_after import after
from wsgi_after.flask import After

app = Flask(__name__)
After(app)  # a threaded runner: the fixture makes it inline
outbox = []
release = threading.Event()

def send(address):
    if address == "broken":
        raise ValueError("smtp down")
    outbox.append((address, threading.current_thread().name))

def slow():
    release.wait(10)

@app.get("/<address>")
def signup(address):
    after(send, address)
    return "ok"

@app.get("/slow/")
def slow_view():
    after(slow)
    return "ok"
"""


def test_after_inline_runs_callbacks_in_close_and_reraises(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        app=APP,
        test_app="""
import threading
from app import app, outbox

def test_runs_inline(after_inline):
    with app.test_client().get("/ada") as response:
        assert outbox == []
    assert outbox == [("ada", threading.current_thread().name)]

def test_failing_callback_fails_the_test(after_inline):
    app.test_client().get("/broken", buffered=True)
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_app.py::test_failing_callback_fails_the_test*"])
    result.stdout.fnmatch_lines(["*ValueError: smtp down*"])


def test_after_wait_waits_and_times_out(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        app=APP,
        test_app="""
import pytest
from app import app, outbox, release

def test_waits(after_wait):
    app.test_client().get("/grace", buffered=True)
    after_wait(timeout=5)
    assert [a for a, _ in outbox] == ["grace"]

def test_times_out(after_wait):
    app.test_client().get("/slow/", buffered=True)
    with pytest.raises(TimeoutError, match="still had callbacks after 0.1 s"):
        after_wait(timeout=0.1)
    release.set()
    after_wait(timeout=5)
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_after_inline_fails_the_test_for_an_interrupt_and_blames_only_its_own_runs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_app="""
import threading
from flask import Flask
from wsgi_after import ThreadRunner, after
from wsgi_after.flask import After

app = Flask(__name__)
After(app)
other = Flask("other")
After(other, runner=ThreadRunner(max_workers=1))  # another app, on a background runner

def interrupt():
    raise KeyboardInterrupt

gate = threading.Event()

def broken():
    gate.wait(10)
    raise ValueError("background failure")

@app.get("/stop")
def stop():
    after(interrupt)
    return "ok"

@other.get("/broken")
def other_broken():
    after(broken)
    return "ok"

def test_interrupting_callback_fails_only_this_test(after_inline):
    app.test_client().get("/stop", buffered=True)

def test_queue_on_the_background_runner():
    other.test_client().get("/broken", buffered=True)  # waits for the gate

def test_background_failure_is_not_blamed_on_an_inline_test(after_inline, after_wait):
    gate.set()
    after_wait(timeout=5)  # the background callback fails while this test runs

def test_session_goes_on():
    pass
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        ["FAILED test_app.py::test_interrupting_callback_fails_only_this_test*"]
    )
    result.stdout.fnmatch_lines(["*A callback raised KeyboardInterrupt()*"])


def test_after_inline_sees_failures_under_a_django_logging_that_disables_existing_loggers(
    pytester: pytest.Pytester,
) -> None:
    # The plugin (loaded first) creates the 'wsgi_after' logger; Django's LOGGING without
    # 'disable_existing_loggers': False then disables every logger that exists (issue 21, 8).
    pytester.makeconftest(
        """
import django
from django.conf import settings

settings.configure(LOGGING={"version": 1, "root": {"level": "WARNING"}})
django.setup()
"""
    )
    pytester.makepyfile(
        app=APP,
        test_app="""
from app import app

def test_failing_callback_fails_the_test(after_inline):
    app.test_client().get("/broken", buffered=True)
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ValueError: smtp down*"])


def test_after_inline_fails_the_test_however_the_wsgi_after_logger_is_silenced(
    pytester: pytest.Pytester,
) -> None:
    # The failure reaches the fixture through the callback events, not the log: a
    # logger silenced by level, filter, logging.disable() or a dictConfig hides nothing.
    pytester.makepyfile(
        app=APP,
        test_app="""
import logging
import logging.config
import pytest
from app import app

def by_level(logger):
    logger.setLevel(logging.CRITICAL)

def by_filter(logger):
    logger.addFilter(lambda record: False)

def by_disable(logger):
    logging.disable(logging.CRITICAL)

def by_disabled(logger):
    logger.disabled = True

def by_dict_config(logger):
    logging.config.dictConfig(
        {"version": 1, "loggers": {"wsgi_after": {"level": "CRITICAL", "propagate": False}}}
    )

@pytest.fixture(params=[by_level, by_filter, by_disable, by_disabled, by_dict_config])
def silenced(request):
    logger = logging.getLogger("wsgi_after")
    level, filters = logger.level, logger.filters[:]
    request.param(logger)
    yield
    logging.disable(logging.NOTSET)
    logger.setLevel(level)
    logger.filters[:] = filters

def test_failing_callback_fails_the_test(silenced, after_inline):
    app.test_client().get("/broken", buffered=True)
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=5)
    assert result.stdout.str().count("ValueError: smtp down") >= 5


def test_after_wait_waits_for_a_plain_thread_pool_executor(pytester: pytest.Pytester) -> None:
    # The library takes any object with submit(); the executor is in no registry, so
    # after_wait waits for the requests' chains it was handed, not for its runners.
    pytester.makepyfile(
        test_app="""
import concurrent.futures
import threading
import pytest
from flask import Flask
from wsgi_after import after
from wsgi_after.flask import After

executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
app = Flask(__name__)
After(app, runner=executor)
outbox = []
release = threading.Event()

def send(address):
    release.wait(10)
    outbox.append(address)

@app.get("/<address>")
def signup(address):
    after(send, address)
    return "ok"

def test_waits_for_the_executor(after_wait):
    release.set()
    app.test_client().get("/ada", buffered=True)
    app.test_client().get("/grace", buffered=True)
    after_wait(timeout=5)
    assert sorted(outbox) == ["ada", "grace"]

def test_times_out_naming_the_request(after_wait):
    release.clear()
    app.test_client().get("/slow", buffered=True)
    with pytest.raises(TimeoutError, match="ThreadPoolExecutor.*'GET /slow'"):
        after_wait(timeout=0.1)
    release.set()
    after_wait(timeout=5)
    assert outbox[-1] == "slow"
""",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_the_inline_collector_keeps_a_failing_task_that_no_event_names() -> None:
    # Not a request's chain (no callback events): its failure is still the test's.
    collector = _InlineCollector()
    events.subscribe(collector.on_event)
    try:
        collector.submit(lambda: 1 / 0)
    finally:
        events.unsubscribe(collector.on_event)
    [error] = collector.errors
    assert str(error) == (
        "Task ['tests.test_pytest_plugin.test_the_inline_collector_keeps_a_failing_task_that"
        "_no_event_names.<locals>.<lambda>'] queued by '?' failed when run inline."
    )
