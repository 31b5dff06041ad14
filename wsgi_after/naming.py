"""How callbacks and requests are named in log lines: readable, and safe.

Log lines name the callback (``module.qualname``) and the request that queued it
(``METHOD /path``). The path comes from the client, so it is untrusted text:
:func:`safe` escapes control characters, so that ``%0D%0A`` in a URL cannot
forge a log line or a terminal escape, and shows WSGI's latin-1 strings as the
UTF-8 the client sent::

    >>> safe("/caf\\xc3\\xa9\\r\\nFAKE LINE")
    '/café\\\\r\\\\nFAKE LINE'
"""

from __future__ import annotations

import contextlib
import functools
import re
import typing as t

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return repr(char)[1:-1] if char not in "\u2028\u2029" else f"\\u{ord(char):04x}"


def safe(text: object) -> str:
    """``text`` fit for one log line: UTF-8 shown as such, control characters escaped.

    WSGI gives the path as latin-1 decoded bytes; they are shown as UTF-8 when
    they are UTF-8. Never raises, whatever ``text`` is.
    """
    if type(text) is not str:
        try:
            text = str(text)
        except Exception:
            text = f"<unprintable {type(text).__name__}>"
    if not text.isascii():
        # Not WSGI's latin-1 form of UTF-8: shown as it is, escaped.
        with contextlib.suppress(UnicodeError):
            text = text.encode("latin-1").decode("utf-8")
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def callback_name(func: object) -> str:
    """``module.qualname`` of a callback, its type's for other callables; a partial is
    ``functools.partial(module.qualname)`` of the function it calls, so that a log line
    names what was lost."""
    name = getattr(func, "__qualname__", None)
    if not isinstance(name, str):
        if isinstance(func, functools.partial):  # and the function it calls
            return f"functools.partial({callback_name(func.func)})"
        func = type(func)
        name = func.__qualname__
    module = getattr(func, "__module__", None)
    return safe(f"{module}.{name}" if isinstance(module, str) and module else name)


def describe_request(environ: t.Mapping[str, t.Any] | None) -> str:
    """``METHOD /path`` (``SCRIPT_NAME + PATH_INFO``) of a WSGI environ, log-safe."""
    if not environ:
        return "? /"
    method, path = method_and_path(environ)
    return f"{safe(method)} {safe(path)}"


def method_and_path(environ: t.Mapping[str, t.Any]) -> tuple[str, str]:
    """The request's method and full path, as strings (unescaped)."""
    script = environ.get("SCRIPT_NAME", "")
    path = environ.get("PATH_INFO", "")
    if type(script) is not str or type(path) is not str:
        script, path = safe(script), safe(path)
    method = environ.get("REQUEST_METHOD", "?")
    return method if type(method) is str else safe(method), (script + path) or "/"
