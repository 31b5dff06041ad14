"""The response wrapper that notices when the server is done with a response.

PEP 3333 says the server calls the response iterable's ``close()`` once it has
sent the response (or given up on it). :class:`ClosingResponse` wraps the app's
iterable so that ``close()`` first closes the app's iterable, then calls
:meth:`~ClosingResponse.on_close`. All the PEP 3333 care lives here:

* chunks are yielded as they come, never buffered;
* the wrapper has ``__len__`` only when the app's iterable has it (waitress calls
  ``len()`` whenever it exists): it then becomes its class's ``sized`` variant,
  or for a list (the commonest body) its ``listed`` variant, which hands the
  server the list's own iterator: no Python frame per chunk;
* ``close()`` is idempotent and thread-safe (waitress may call it twice);
* a ``wsgi.file_wrapper`` response is *not* wrapped, since servers find their
  sendfile path with ``isinstance``. When the server's ``file_wrapper`` is a
  Python class whose objects take attributes (gunicorn, waitress, wsgiref:
  :func:`closes_in_place`), :meth:`~ClosingResponse.wrap` hooks the ``close()``
  of the object it made in place (:class:`CloseHook`), and the environ is left
  alone; for any other (uWSGI's function, mod_wsgi's C type)
  :class:`FileWrapperHook` stands in for it and hands it a :class:`ClosingFile`
  proxy whose ``close()`` fires.

Nothing here knows about threads or callbacks: a subclass says what closing means
(:class:`~wsgi_after._chain.Chain` hands the request's callbacks to its runner).
The wrapper is made before the app runs, so that the request has one object,
not two, on the hot path; :meth:`~ClosingResponse.wrap` then takes the app's
iterable.
"""

from __future__ import annotations

import inspect
import types
import typing as t


class ClosingResponse:
    """Wraps a response iterable; records how it ended; calls :meth:`on_close` once."""

    __slots__ = ("_inner", "_iterator", "_once", "completed", "error", "file_response")

    # The subclass's __init__ sets these fields (no super().__init__(): one Python
    # call less per request).
    #: The app's iterable (``()`` until :meth:`wrap`).
    _inner: t.Iterable[bytes]
    #: ``[None]`` until the first close(): list.pop() is atomic under the GIL, so
    #: exactly one close() gets the item, whatever the threads.
    _once: list[None]
    #: True once the server asked for more after the last chunk (a ``listed``
    #: wrapper tells it by :meth:`sent_all`).
    completed: bool
    #: The list's iterator handed to the server (``listed`` variant only; unset
    #: until the server iterates; None once the response is released).
    _iterator: t.Iterator[bytes] | None
    #: The exception the app or its iterable raised.
    error: BaseException | None
    #: What the server's ``wsgi.file_wrapper`` returned during the request (all of
    #: it, when it was called more than once).
    file_response: object

    #: Whether :meth:`sent_all` reads the iterator handed to the server (``listed``):
    #: then it is read once more before the body is let go.
    reads_iterator: t.ClassVar[bool] = False

    #: The subclass with ``__len__`` (and :class:`SizedMixin`) that :meth:`wrap`
    #: switches to for sized iterables; every subclass names its own.
    sized: t.ClassVar[type[ClosingResponse]]
    #: The subclass with :class:`ListMixin` that :meth:`wrap` switches to for a list.
    listed: t.ClassVar[type[ClosingResponse]]

    def wrap(
        self, result: t.Iterable[bytes], file_class: type[object] | None = None
    ) -> t.Iterable[bytes]:
        """Return what the server should get for the app's ``result``.

        The server's own file wrapper object goes back unwrapped, so the server
        still recognises it (``isinstance``) and uses sendfile: the object its
        hooked ``file_wrapper`` returned, or an object of exactly ``file_class``
        (the server's ``file_wrapper`` class, when :func:`closes_in_place`), whose
        ``close()`` is hooked here. Anything else is wrapped by this object,
        sized when ``result`` is.
        """
        kind = type(result)
        if kind is file_class:  # (not isinstance(): it costs every request more)
            try:  # an attribute of the object shadows its class's close()
                result.close = CloseHook(getattr(result, "close", None), self)  # type: ignore[attr-defined]
            except Exception:  # it takes none after all (a __setattr__ refused): wrap it
                pass
            else:
                self.completed = True  # as below
                return result
        made = self.file_response
        if made is not None and (
            result is made or (type(made) is _Several and any(result is m for m in made))
        ):
            # The server sends it, with sendfile where it can, and tells us no more
            # than close(): a file response counts as fully sent.
            self.completed = True
            return result
        self._inner = result
        if kind is list:  # the commonest body
            self.__class__ = self.listed
            return self
        try:  # (inline: a call costs every response more)
            sized = hasattr(result, "__len__")
        except Exception:  # a lazy proxy's __getattr__ raising other than AttributeError
            sized = False
        if sized:
            self.__class__ = self.sized
        return self

    def sent_all(self) -> bool:
        """Whether the server asked for more after the body's last chunk: the body
        was fully sent (False when the client went away or iterating raised)."""
        return self.completed

    def __iter__(self) -> t.Iterator[bytes]:
        chunk = None
        try:
            for chunk in self._inner:  # ('yield from' costs more per response)
                yield chunk
        except GeneratorExit:  # the server dropped or closed this iterator: not an error
            raise
        except BaseException as e:  # gevent.Timeout too
            self.error = e
            if chunk is None:  # nothing was sent: the server answers with an error itself
                self.on_error_before_body()
            raise
        self.completed = True

    def close(self) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        try:
            try:  # (inline: a call costs every response more)
                close = getattr(self._inner, "close", None)
            except Exception:  # a lazy proxy's __getattr__: the body has no close()
                close = None
            if close is not None:
                close()
        except BaseException as e:  # the server gets it too; the callbacks see it first
            if self.error is None:
                self.error = e
            raise
        finally:
            self.on_close()

    def on_close(self) -> None:
        """Called once, after the app's iterable was closed; subclasses act here."""

    def on_error_before_body(self) -> None:
        """Called when the app or its body raised before any of the body was sent: the
        server answers with an error response of its own (a 500); subclasses record it."""


class SizedMixin:
    """Gives a :class:`ClosingResponse` subclass the ``__len__`` of its iterable."""

    __slots__ = ()
    _inner: t.Iterable[bytes]

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]


class ListMixin(SizedMixin, ClosingResponse):
    """Gives a :class:`ClosingResponse` subclass for a list body the list's own iterator.

    A list's iterator cannot raise, and a C iterator costs the server no Python
    frame per chunk, where the generic :meth:`ClosingResponse.__iter__` is a
    generator. Whether the server asked for more after the last chunk is read
    from the iterator itself, only when someone asks (:meth:`sent_all`).
    """

    __slots__ = ()

    reads_iterator = True

    def __iter__(self) -> t.Iterator[bytes]:
        self._iterator = iterator = iter(self._inner)
        return iterator

    def sent_all(self) -> bool:
        iterator = getattr(self, "_iterator", None)
        if iterator is None:  # never iterated, or let go at close (read then)
            return self.completed
        # A list iterator drops its list once next() went past the end, not at the
        # last item: its pickle state then holds no index (CPython 3.10 to 3.13).
        return len(iterator.__reduce__()) == 2


def closes_in_place(file_wrapper: object) -> bool:
    """Whether the objects of the server's ``file_wrapper`` can have their ``close()``
    hooked in place: it is a class made at run time (not one of the interpreter's or
    an extension's static types), its objects have a ``__dict__``, and its own
    ``close`` is a Python function (a method) or none, which an attribute of the
    object shadows (not a property; not a C method, as ``io``'s on Python 3.13,
    whose types are made at run time too).

    Then nothing needs to stand in for ``environ["wsgi.file_wrapper"]`` (two environ
    writes less per request), and the server's sendfile path gets the file itself.
    """
    if not isinstance(file_wrapper, type) or not file_wrapper.__dictoffset__:
        return False
    if not file_wrapper.__flags__ & _HEAP_TYPE:  # a static C type (mod_wsgi's)
        return False
    close = inspect.getattr_static(file_wrapper, "close", None)
    return close is None or type(close) is types.FunctionType


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


class CloseHook:
    """Stands in for the ``close()`` of the server's own file wrapper object.

    Calls the object's own ``close`` (when it had one), then
    ``response.on_close()``, once, whatever the threads.
    """

    __slots__ = ("_close", "_once", "_response")

    def __init__(self, close: t.Callable[[], object] | None, response: ClosingResponse) -> None:
        self._close = close
        self._response = response
        self._once = [None]

    def __call__(self) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        try:
            if self._close is not None:
                self._close()
        finally:
            self._response.on_close()


class ClosingFile:
    """A proxy of a file handed to the server's ``file_wrapper``.

    Every attribute (``read``, ``fileno``, ``seek``, ``tell`` ...) is the file's own,
    so the server's sendfile path still sees a real file descriptor; ``close()``
    closes the file, then calls ``response.on_close()``, once.
    """

    __slots__ = ("_file", "_once", "_response")

    def __init__(self, file: t.Any, response: ClosingResponse) -> None:
        self._file = file
        self._response = response
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
            self._response.on_close()


class FileWrapperHook:
    """Stands in for the server's ``environ["wsgi.file_wrapper"]`` while the app runs.

    It calls the server's own ``file_wrapper`` with a :class:`ClosingFile` and
    records the object it returned on ``response.file_response``, so that
    :meth:`ClosingResponse.wrap` can hand exactly that object back to the server.
    One hook serves every request: ``current`` finds the current request's
    response.
    """

    __slots__ = ("current", "server_wrapper")

    def __init__(
        self,
        server_wrapper: t.Callable[..., t.Any],
        current: t.Callable[[], ClosingResponse | None],
    ) -> None:
        self.server_wrapper = server_wrapper
        self.current = current

    def __call__(self, filelike: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        response = self.current()
        if response is None:  # called outside the request (another thread): nothing to hook
            return self.server_wrapper(filelike, *args, **kwargs)
        result = self.server_wrapper(ClosingFile(filelike, response), *args, **kwargs)
        made = response.file_response
        if made is None:
            response.file_response = result
        elif type(made) is _Several:  # an app that calls it more than once: any may be
            made.append(result)  # the one it returns
        else:
            response.file_response = _Several((made, result))
        return result


class _Several(list[object]):
    """The objects of a request that called ``wsgi.file_wrapper`` more than once."""

    __slots__ = ()
