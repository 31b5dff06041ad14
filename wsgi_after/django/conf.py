"""The ``WSGI_AFTER`` setting: read once, with the core's defaults, checked.

::

    WSGI_AFTER = {"MAX_WORKERS": 8, "ON_FULL": "drop"}
    WSGI_AFTER = {"RUNNER": "tasks", "TASKS_BACKEND": "durable", "ALLOW": ["shop.tasks"]}

:func:`options` reads ``settings.WSGI_AFTER`` at first use and keeps the result;
``override_settings`` (and anything else that sends ``setting_changed``) makes it
read again, so a test can switch ``INLINE`` on. :func:`problems` is what the
system check reports; :func:`options` raises the first of them.
"""

from __future__ import annotations

import dataclasses
import typing as t

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..remote import allowed_modules

#: The keys of ``WSGI_AFTER`` and their defaults: the core's (see ``ThreadRunner``).
DEFAULTS: dict[str, object] = {
    "MAX_WORKERS": None,  # min(32, cpu_count + 4), like ThreadPoolExecutor
    "MAX_PENDING": 1000,
    "ON_FULL": "block",
    "DRAIN_TIMEOUT": 25.0,  # under gunicorn's 30 s graceful_timeout
    "INLINE": False,
    # Where requests' callbacks go: "threads" (the pool above) or "tasks" (a
    # django.tasks backend's workers, see wsgi_after.django.tasks.TasksRunner).
    "RUNNER": "threads",
    "TASKS_BACKEND": "default",  # the TASKS alias "tasks" hands callbacks to
    "ALLOW": [],  # modules whose functions a tasks worker may run (never the message's)
}


@dataclasses.dataclass(frozen=True)
class Options:
    """``WSGI_AFTER`` with every key filled in."""

    max_workers: int | None
    max_pending: int
    on_full: t.Literal["block", "run", "drop"]
    drain_timeout: float
    inline: bool
    runner: t.Literal["threads", "tasks"]
    tasks_backend: str
    allow: tuple[str, ...]


def problems(value: object) -> list[str]:
    """What is wrong with a ``WSGI_AFTER`` value, one sentence per problem naming the fix."""
    if not isinstance(value, dict):
        return [f"'WSGI_AFTER' must be a dict, got {type(value).__name__!r}."]
    found = []
    for key in value:
        if key not in DEFAULTS:
            found.append(
                f"'WSGI_AFTER' has an unknown key {key!r}; the keys are"
                f" {', '.join(map(repr, DEFAULTS))}."
            )
    workers = value.get("MAX_WORKERS")
    if workers is not None and (type(workers) is not int or workers < 1):
        found.append(
            f"WSGI_AFTER['MAX_WORKERS'] must be None or an int of at least 1, got {workers!r}."
        )
    pending = value.get("MAX_PENDING", 1000)
    if type(pending) is not int or pending < 1:
        found.append(f"WSGI_AFTER['MAX_PENDING'] must be an int of at least 1, got {pending!r}.")
    on_full = value.get("ON_FULL", "block")
    if on_full not in ("block", "run", "drop"):
        found.append(f"WSGI_AFTER['ON_FULL'] must be 'block', 'run' or 'drop', got {on_full!r}.")
    drain = value.get("DRAIN_TIMEOUT", 25.0)
    # bool is not a number of seconds; 'not >= 0' refuses nan too
    if type(drain) not in (int, float) or not drain >= 0:
        found.append(
            f"WSGI_AFTER['DRAIN_TIMEOUT'] must be a number of seconds of at least 0, got {drain!r}."
        )
    inline = value.get("INLINE", False)
    if type(inline) is not bool:
        found.append(f"WSGI_AFTER['INLINE'] must be True or False, got {inline!r}.")
    runner = value.get("RUNNER", "threads")
    if runner not in ("threads", "tasks"):
        found.append(f"WSGI_AFTER['RUNNER'] must be 'threads' or 'tasks', got {runner!r}.")
    alias = value.get("TASKS_BACKEND", "default")
    if not isinstance(alias, str) or not alias:
        found.append(
            f"WSGI_AFTER['TASKS_BACKEND'] must be an alias of the TASKS setting, got {alias!r}."
        )
    try:
        allowed_modules(value.get("ALLOW", []), setting="WSGI_AFTER['ALLOW']")
    except ValueError as e:
        found.append(str(e))
    return found


_cached: list[Options] = []


def options() -> Options:
    """``settings.WSGI_AFTER`` with the defaults filled in, read once.

    :raises ImproperlyConfigured: if the setting has a bad value.
    """
    if _cached:
        return _cached[0]
    value = getattr(settings, "WSGI_AFTER", {})
    found = problems(value)
    if found:
        raise ImproperlyConfigured(found[0])
    full = {**DEFAULTS, **t.cast(dict[str, t.Any], value)}
    read = Options(
        max_workers=full["MAX_WORKERS"],
        max_pending=full["MAX_PENDING"],
        on_full=full["ON_FULL"],
        drain_timeout=float(full["DRAIN_TIMEOUT"]),
        inline=full["INLINE"],
        runner=full["RUNNER"],
        tasks_backend=full["TASKS_BACKEND"],
        allow=allowed_modules(full["ALLOW"], setting="WSGI_AFTER['ALLOW']"),
    )
    _cached[:] = [read]
    return read


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: object) -> None:
    if setting == "WSGI_AFTER":
        _cached.clear()
