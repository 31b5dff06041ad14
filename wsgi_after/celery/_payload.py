"""What a request's Celery message carries, fixed when ``after()`` is called.

:meth:`CeleryRunner.check_callback <wsgi_after.celery.CeleryRunner.check_callback>`
calls :func:`check` for each ``after()`` call: the callback must be one a worker
runs, and its arguments are encoded and decoded with the app's serializer then,
so that what is sent is what they were then. At the response's close,
:func:`build` makes the chain's payload from those copies, and
:func:`trace_headers` the W3C trace context for the message headers::

    check_payload(func, args, kwargs, allow, "json")  # in the request: may raise TypeError
    payload = build_payload(chain, allow, "json")  # at close
"""

from __future__ import annotations

import contextvars
import typing as t

from .._context import current_chain
from ..naming import callback_name
from ..remote import make_message
from .message import CallbackRef, encode_arguments
from .policy import publishable_reference

if t.TYPE_CHECKING:
    from .._chain import Chain

_otel_headers: t.Callable[[contextvars.Context], dict[str, str]] | None
try:  # optional: the trace context travels only when OpenTelemetry is installed
    from ..otel import trace_headers as _otel_headers
except ImportError:  # pragma: no cover - depends on the environment
    _otel_headers = None


class Checked(t.NamedTuple):
    """What :func:`check` made of one ``after()`` call."""

    kwargs: dict[str, t.Any]  # the call's own kwargs dict: which queued callback it is
    reference: str
    args: list[t.Any]
    sent_kwargs: dict[str, t.Any]


# The encoded copy of the arguments of the after() call being checked. after() copies
# the context right after the check, so the copy travels in the queued callback's own
# context snapshot, never in the environ (Django's request.META, which a 500's error
# report mails to ADMINS).
_CHECKED: contextvars.ContextVar[Checked | None] = contextvars.ContextVar(
    "wsgi_after.celery.checked", default=None
)


def check_payload(
    func: t.Any,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    allow: tuple[str, ...],
    serializer: str,
) -> None:
    """Refuse what a worker would not run, and keep the arguments as encoded now.

    :raises TypeError: if ``func`` is neither a Celery task nor a module-level
        function of a module in ``allow``, or its arguments do not serialize.
    """
    name = callback_name(func)
    reference = publishable_reference(func, name, allow)
    snapshot = encode_arguments(name, args, kwargs, serializer)
    if current_chain() is not None:
        _CHECKED.set(Checked(kwargs, reference, *snapshot))


def build_payload(chain: Chain, allow: tuple[str, ...], serializer: str) -> dict[str, t.Any]:
    """The payload of ``chain``'s message: each callback as :func:`check` kept it (one
    not checked, queued under another runner, is checked now)."""
    callbacks = []
    for func, args, kwargs, context in chain.queued():
        checked = context.get(_CHECKED)
        if checked is not None and checked.kwargs is kwargs:
            _, reference, sent_args, sent_kwargs = checked
        else:  # not checked by after() (another runner's chain): check it now
            name = callback_name(func)
            try:
                reference = publishable_reference(func, name, allow)
            except TypeError:
                reference = name  # the worker refuses it, and logs so
            try:
                sent_args, sent_kwargs = encode_arguments(name, args, kwargs, serializer)
            except TypeError:  # publishing fails to encode it: logged, dead-lettered
                sent_args, sent_kwargs = list(args), kwargs
        callbacks.append(CallbackRef(reference, sent_args, sent_kwargs))
    return make_message(chain, callbacks)


def trace_headers(chain: Chain) -> dict[str, str]:
    """The W3C trace context current at the first ``after()``, for the message headers."""
    if _otel_headers is None or not chain.callbacks:
        return {}
    return _otel_headers(chain.queued()[0].context)
