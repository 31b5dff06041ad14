"""The response wrappers that notice when the server is done with a response.

PEP 3333 says the server calls the response iterable's ``close()`` once it has
sent the response (or given up on it). :class:`ClosingResponse` wraps the app's
iterable so that ``close()`` first closes the app's iterable, then calls
``on_close``. All the PEP 3333 care lives here:

* chunks are yielded as they come, never buffered;
* :class:`SizedClosingResponse` adds ``__len__`` only when the app's iterable has
  it (waitress calls ``len()`` whenever it exists);
* ``close()`` is idempotent and thread-safe (waitress may call it twice);
* a ``wsgi.file_wrapper`` response is *not* wrapped, since servers find their
  sendfile path with ``isinstance``: :class:`FileWrapperHook` instead hands the
  server's ``file_wrapper`` a :class:`ClosingFile` proxy whose ``close()`` fires.

Nothing here knows about threads or callbacks: ``on_close`` is any callable.
"""

from __future__ import annotations

import typing as t


class _Sink(t.Protocol):
    """What the wrappers report to: the request's :class:`~wsgi_after._chain.Chain`."""

    completed: bool
    error: BaseException | None
    file_response: object

    def on_close(self) -> None: ...


class ClosingResponse:
    """Wraps a response iterable; reports its end and calls ``sink.on_close()`` once."""

    __slots__ = ("_inner", "_once", "_sink")

    _inner: t.Iterable[bytes]
    _sink: _Sink
    #: ``[None]`` until the first close(): list.pop() is atomic under the GIL, so
    #: exactly one close() gets the item, whatever the threads.
    _once: list[None]

    def __iter__(self) -> t.Iterator[bytes]:
        try:
            yield from self._inner
        except Exception as e:
            self._sink.error = e
            raise
        self._sink.completed = True

    def close(self) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._sink.on_close()


class SizedClosingResponse(ClosingResponse):
    """A :class:`ClosingResponse` for an inner iterable that has ``__len__``."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]


class ClosingFile:
    """A proxy of a file handed to the server's ``file_wrapper``.

    Every attribute (``read``, ``fileno``, ``seek``, ``tell`` ...) is the file's own,
    so the server's sendfile path still sees a real file descriptor; ``close()``
    closes the file, then calls ``sink.on_close()``, once.
    """

    __slots__ = ("_file", "_once", "_sink")

    def __init__(self, file: t.Any, sink: _Sink) -> None:
        self._file = file
        self._sink = sink
        self._once = [None]

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._file, name)

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self._file)

    def close(self) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        try:
            close = getattr(self._file, "close", None)
            if close is not None:
                close()
        finally:
            self._sink.on_close()


class FileWrapperHook:
    """Stands in for the server's ``environ["wsgi.file_wrapper"]`` while the app runs.

    It calls the server's own ``file_wrapper`` with a :class:`ClosingFile` and
    records the object it returned on ``sink.file_response``, so that
    :func:`wrap_response` can hand exactly that object back to the server. One
    hook serves every request: ``get_sink`` finds the current request's sink.
    """

    __slots__ = ("get_sink", "server_wrapper")

    def __init__(
        self, server_wrapper: t.Callable[..., t.Any], get_sink: t.Callable[[], _Sink | None]
    ) -> None:
        self.server_wrapper = server_wrapper
        self.get_sink = get_sink

    def __call__(self, filelike: t.Any, *args: t.Any) -> t.Any:
        sink = self.get_sink()
        if sink is None:  # called outside the request (another thread): nothing to hook
            return self.server_wrapper(filelike, *args)
        result = self.server_wrapper(ClosingFile(filelike, sink), *args)
        sink.file_response = result
        return result


def wrap_response(result: t.Iterable[bytes], sink: _Sink) -> t.Iterable[bytes]:
    """Return what the server should get for the app's ``result``.

    The server's own file wrapper object goes back unwrapped, so the server
    still recognises it (``isinstance``) and uses sendfile; anything else is
    wrapped in a :class:`ClosingResponse`, sized when ``result`` is.
    """
    if result is sink.file_response:
        # The server sends it, with sendfile where it can, and tells us no more
        # than close(): a file response counts as fully sent.
        sink.completed = True
        return result
    # Built without __init__: one Python call less per request on the hot path.
    wrapper = _new(SizedClosingResponse if hasattr(result, "__len__") else ClosingResponse)
    wrapper._inner = result
    wrapper._sink = sink
    wrapper._once = [None]
    return wrapper


_new = object.__new__
