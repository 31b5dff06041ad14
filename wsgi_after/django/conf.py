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
from ..runner import DEFAULT_POOL, OnFull, PoolOptions

#: The keys of ``WSGI_AFTER`` and their defaults: the core's (:class:`~wsgi_after.PoolOptions`).
DEFAULTS: dict[str, object] = {
    "MAX_WORKERS": DEFAULT_POOL.max_workers,
    "MAX_PENDING": DEFAULT_POOL.max_pending,
    "ON_FULL": DEFAULT_POOL.on_full,
    "DRAIN_TIMEOUT": DEFAULT_POOL.drain_timeout,
    "INLINE": False,
    # Where requests' callbacks go: "threads" (the pool above) or "tasks" (a
    # django.tasks backend's workers, see wsgi_after.django.tasks.TasksRunner).
    "RUNNER": "threads",
    "TASKS_BACKEND": "default",  # the TASKS alias "tasks" hands callbacks to
    "ALLOW": [],  # modules whose functions a tasks worker may run (never the message's)
}


def _setting(name: str) -> str:
    return f"WSGI_AFTER[{name.upper()!r}]"


@dataclasses.dataclass(frozen=True)
class Options:
    """``WSGI_AFTER`` with every key filled in."""

    max_workers: int | None
    max_pending: int
    on_full: OnFull
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
    pool = PoolOptions(
        value.get("MAX_WORKERS", DEFAULT_POOL.max_workers),
        value.get("MAX_PENDING", DEFAULT_POOL.max_pending),
        value.get("ON_FULL", DEFAULT_POOL.on_full),
        value.get("DRAIN_TIMEOUT", DEFAULT_POOL.drain_timeout),
    )
    found.extend(pool.problems(_setting))
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
