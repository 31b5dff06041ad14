"""Names in log lines: readable and safe, whatever the client sent."""

from __future__ import annotations

import functools

import pytest

from wsgi_after.naming import callback_name, describe_request, safe


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("/plain", "/plain", id="ascii"),
        pytest.param("/caf\xc3\xa9", "/café", id="utf8-in-latin1"),
        pytest.param("/\xe9", "/é", id="latin1-not-utf8"),
        pytest.param("/a\r\nFAKE 2026 ERROR", "/a\\r\\nFAKE 2026 ERROR", id="crlf"),
        pytest.param("/\x1b[31mred", "/\\x1b[31mred", id="terminal-escape"),
        pytest.param("/\u2028x", "/\\u2028x", id="line-separator"),
        pytest.param("/\x85x", "/\\x85x", id="c1-next-line"),
        pytest.param(b"/bytes", "b'/bytes'", id="not-a-str"),
    ],
)
def test_safe_escapes_controls_and_shows_utf8(text: object, shown: str) -> None:
    assert safe(text) == shown


def test_safe_never_raises() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert safe(Hostile()) == "<unprintable Hostile>"


def test_describe_request_handles_odd_environs() -> None:
    assert describe_request({"REQUEST_METHOD": "GET", "PATH_INFO": 5}) == "GET 5"
    assert describe_request({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/app"}) == "GET /app"
    assert describe_request({}) == "? /"


def test_callback_name_of_functions_and_other_callables() -> None:
    class Job:
        def __call__(self) -> None:
            pass

    assert callback_name(print) == "builtins.print"
    assert callback_name(Job()).endswith(
        "test_callback_name_of_functions_and_other_callables.<locals>.Job"
    )


def send_receipt(order: int) -> None:
    pass


def test_a_partial_is_named_with_the_function_it_calls() -> None:
    # A dropped or failed partial was logged as 'functools.partial': not which callback.
    name = "functools.partial(tests.test_naming.send_receipt)"
    assert callback_name(functools.partial(send_receipt, 7)) == name
    assert callback_name(functools.partial(functools.partial(send_receipt), 7)) == name
