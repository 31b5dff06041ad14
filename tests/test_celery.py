"""CeleryRunner's checks at after() time; they need no broker."""

from __future__ import annotations

import collections.abc
import typing as t

import pytest
from celery import Celery

from wsgi_after.celery import CeleryRunner, RemoteError

app = Celery("checks", broker="redis://127.0.0.1:1/0")  # never connected to here


def module_level(order_id: int) -> None:
    pass


@app.task(name="checks.as_task")  # type: ignore[untyped-decorator]
def as_task(order_id: int) -> None:
    pass


class Service:
    def method(self) -> None:
        pass


@pytest.fixture
def runner() -> collections.abc.Iterator[CeleryRunner]:
    runner = CeleryRunner(app)
    yield runner
    runner.shutdown(1)


def test_module_level_functions_and_tasks_pass(runner: CeleryRunner) -> None:
    runner.check_callback(module_level, (1,), {})
    runner.check_callback(as_task, (1,), {})


def closure() -> t.Callable[[], None]:
    def inner() -> None:
        pass

    return inner


def in_main() -> None:
    pass


in_main.__module__ = "__main__"


@pytest.mark.parametrize(
    ("func", "name"),
    [
        pytest.param(lambda: None, "tests.test_celery.<lambda>", id="lambda"),
        pytest.param(closure(), "tests.test_celery.closure.<locals>.inner", id="closure"),
        pytest.param(Service().method, "tests.test_celery.Service.method", id="method"),
        pytest.param(in_main, "__main__.in_main", id="__main__"),
    ],
)
def test_callbacks_a_worker_cannot_import_are_refused(
    runner: CeleryRunner, func: t.Any, name: str
) -> None:
    with pytest.raises(TypeError) as info:
        runner.check_callback(func, (), {})
    assert str(info.value) == (
        f"'after()' cannot send '{name}' to Celery: a worker imports callbacks by module"
        " and qualified name. Define it at module level, or make it a Celery task."
    )


def test_unserializable_arguments_are_refused(runner: CeleryRunner) -> None:
    with pytest.raises(TypeError) as info:
        runner.check_callback(module_level, (object(),), {})
    message = str(info.value)
    assert message.startswith(
        "'after()' cannot send the arguments of 'tests.test_celery.module_level' to Celery:"
    )
    assert message.endswith(
        "Pass values the 'json' serializer can encode, such as ids rather than objects."
    )


def test_only_chains_are_published(runner: CeleryRunner) -> None:
    with pytest.raises(TypeError, match="publishes request chains only, got 'function'"):
        runner.submit(module_level)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError, match=r"needs a 'celery\.Celery' app, got 'str'"):
        CeleryRunner("redis://")
    with pytest.raises(ValueError, match="'retry_window' must be at least 0, got -1"):
        CeleryRunner(app, retry_window=-1)


def test_remote_error_keeps_type_and_message() -> None:
    error = RemoteError("KeyError", "'order'")
    assert (error.type_name, error.message, str(error)) == (
        "KeyError",
        "'order'",
        "KeyError: 'order'",
    )
