"""``wsgi_after.remote``: the allow list, the message, and running it as a request's chain."""

from __future__ import annotations

import collections.abc
import pathlib
import re
import sys
import typing as t

import pytest

from tests.helpers import package_with_a_command_line
from wsgi_after import Outcome, after, outcome, remote

ALLOW = ("tests.test_remote",)
seen: list[t.Any] = []


def record(value: object) -> None:
    """A module-level function of an allowed module: what the messages call."""
    seen.append((value, outcome()))


def queue_more(value: object) -> None:
    after(record, value)  # a nested after() on the replayed chain runs after the rest


def fails() -> None:
    raise RuntimeError("the callback failed")


@pytest.fixture(autouse=True)
def fresh() -> collections.abc.Iterator[None]:
    seen.clear()
    yield
    seen.clear()


def message(*callbacks: tuple[str, list[t.Any]], **fields: t.Any) -> dict[str, t.Any]:
    return {
        "method": "POST",
        "path": "/orders",
        "status": "201 Created",
        "completed": True,
        "error": None,
        "callbacks": [{"func": f, "args": a, "kwargs": {}} for f, a in callbacks],
        **fields,
    }


@pytest.mark.parametrize(
    ("allow", "error"),
    [
        pytest.param("shop", "must be a list of module names, got 'str'", id="a-string"),
        pytest.param(["shop tasks"], "must list module names like", id="not-a-name"),
        pytest.param(["os.path"], "must not list 'os.path'", id="stdlib"),
        pytest.param(["__main__"], "must not list '__main__'", id="main"),
    ],
)
def test_allowed_modules_refuses_naming_the_fix(allow: object, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        remote.allowed_modules(allow, setting="ALLOW")


def test_allowed_modules_sorts_and_dedupes() -> None:
    assert remote.allowed_modules(["b", "a", "b"]) == ("a", "b")


def test_reference_names_an_allowed_module_level_function() -> None:
    assert remote.reference(record, ALLOW, who="R", fix="") == "tests.test_remote:record"


def test_reference_refuses_a_module_outside_the_allow_list() -> None:
    with pytest.raises(TypeError) as info:
        remote.reference(record, ("shop",), who="'R'", fix="allow {module!r}")
    assert str(info.value) == (
        "'after()' cannot send 'tests.test_remote.record' through 'R': its module"
        " 'tests.test_remote' is not in the allow list. Add it: allow 'tests.test_remote'."
    )


@pytest.mark.parametrize(
    "func",
    [
        pytest.param(lambda: None, id="lambda"),
        pytest.param(print, id="builtin"),
        pytest.param(seen.append, id="bound-method"),
    ],
)
def test_reference_refuses_what_is_not_a_module_level_function(func: object) -> None:
    with pytest.raises(TypeError, match="Define it at module level"):
        remote.reference(func, (*ALLOW, "builtins"), who="R", fix="")


def test_json_arguments_are_copied_and_checked() -> None:
    args, kwargs = remote.json_arguments("f", ((1, 2),), {"k": {"a": None}}, who="R")
    assert (args, kwargs) == ([[1, 2]], {"k": {"a": None}})
    with pytest.raises(TypeError, match=r"^'after\(\)' cannot send the arguments of 'f' through R"):
        remote.json_arguments("f", (object(),), {}, who="R")
    with pytest.raises(TypeError, match="Pass JSON values"):
        remote.json_arguments("f", (float("nan"),), {}, who="R")


@pytest.mark.parametrize(
    ("forged", "error"),
    [
        pytest.param([], "the message is not a mapping", id="not-a-mapping"),
        pytest.param(message(method=1), "'method' and 'path' must be strings", id="method"),
        pytest.param(message(completed="yes"), "'completed' must be a boolean", id="completed"),
        pytest.param(message(error=["x"]), "'error' must be null or two strings", id="error"),
        pytest.param(message(callbacks={}), "'callbacks' must be a list", id="callbacks"),
        pytest.param(
            message(callbacks=[{"func": 1}]), "each callback needs a string 'func'", id="func"
        ),
    ],
)
def test_parse_message_says_what_is_malformed(forged: object, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        remote.parse_message(forged)


def test_run_message_runs_in_order_with_the_requests_outcome() -> None:
    parsed = remote.parse_message(
        message(
            ("tests.test_remote:queue_more", ["nested"]),
            ("tests.test_remote:record", ["first"]),
        )
    )
    assert remote.run_message(parsed, ALLOW) is True
    assert seen == [("first", Outcome(201, True, None)), ("nested", Outcome(201, True, None))]


def test_run_message_gives_the_requests_error_as_a_remote_error() -> None:
    parsed = remote.parse_message(
        message(("tests.test_remote:record", [1]), error=["ValueError", "bad"], status="500 x")
    )
    remote.run_message(parsed, ALLOW)
    [(_, (status, _, error))] = seen
    assert status == 500
    assert isinstance(error, remote.RemoteError)
    assert (error.type_name, error.message) == ("ValueError", "bad")


def test_run_message_refuses_what_this_process_does_not_allow(
    log: pytest.LogCaptureFixture,
) -> None:
    parsed = remote.parse_message(
        message(
            ("os:system", ["echo forged"]),
            ("tests.test_remote:seen", []),
            ("tests.test_remote:record", ["still runs"]),
        )
    )
    assert remote.run_message(parsed, ALLOW) is False
    assert [value for value, _ in seen] == ["still runs"]
    assert log.messages[:2] == [
        "Refused callback 'os:system' queued by 'POST /orders': module 'os' is not in this"
        " worker's allow list ['tests.test_remote']; it was not run.",
        "Refused callback 'tests.test_remote:seen' queued by 'POST /orders': it is not a"
        " plain Python function; it was not run.",
    ]


def test_run_message_logs_a_failure_by_name_and_runs_the_rest(
    log: pytest.LogCaptureFixture,
) -> None:
    parsed = remote.parse_message(
        message(("tests.test_remote:fails", []), ("tests.test_remote:record", ["next"]))
    )
    assert remote.run_message(parsed, ALLOW) is False
    assert [value for value, _ in seen] == ["next"]
    assert (
        "Callback 'tests.test_remote.fails' queued by 'POST /orders' raised RuntimeError."
        in log.messages
    )


def test_run_message_never_imports_a_dunder_module_and_survives_an_import_that_exits(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, log: pytest.LogCaptureFixture
) -> None:
    # With ALLOW=['shop'], 'shop.__main__:x' matched the allow list: importing it ran the
    # package's command line, and an argparse SystemExit (only Exception was caught) left
    # run_message, so the message's other callbacks never ran: Celery's worker had the fix.
    marker = package_with_a_command_line(tmp_path, "shop_dup", monkeypatch)
    parsed = remote.parse_message(
        message(
            ("shop_dup.__main__:x", []),
            ("shop_dup.__init__:x", []),
            ("shop_dup.cli:x", []),
            ("tests.test_remote:record", ["still runs"]),
        )
    )
    try:
        assert remote.run_message(parsed, ("shop_dup", *ALLOW)) is False
    finally:
        for name in ("shop_dup", "shop_dup.cli"):
            sys.modules.pop(name, None)
    assert [value for value, _ in seen] == ["still runs"]
    assert not marker.exists()  # its __main__ never ran
    assert "shop_dup.__init__" not in sys.modules
    assert log.messages[:3] == [
        *(
            f"Refused callback 'shop_dup.{dunder}:x' queued by 'POST /orders': it does not name"
            " a module-level function as 'module:function'; it was not run."
            for dunder in ("__main__", "__init__")
        ),
        "Callback 'shop_dup.cli:x' queued by 'POST /orders' cannot be imported on this worker.",
    ]
