"""The pytest plugin's fixtures, run in a pytest of their own (pytester)."""

from __future__ import annotations

import pytest

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
