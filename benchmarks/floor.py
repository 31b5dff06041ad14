"""What a request that queues nothing costs, promise by promise, in CPU instructions.

Issue 15 asks ``AfterMiddleware`` with no callback for 14k instructions per request.
This builds stripped-down middlewares that keep the same promises, added one at a
time, written as plainly as Python allows (one function, every field set inline,
nothing else), and counts them exactly as ``instructions.py`` counts its stacks,
beside ``AfterMiddleware`` itself. Each row's increase is what that promise costs
at the least; the last rows show what the shape of a class (``__init__`` and
``wrap()`` as methods) adds. Not a product: a measurement for deciding what to
give up, if anything.

Commands::

    python benchmarks/floor.py          # the table, in about a minute on 2 cores
    python benchmarks/floor.py --write  # also update its block in RESULTS.md
"""

from __future__ import annotations

import contextvars
import sys
import typing as t

import instructions
from instructions import PLAIN, Settle, Stack, bare_app

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_CURRENT: contextvars.ContextVar[object] = contextvars.ContextVar("floor", default=None)
_new = object.__new__
OPEN, CLOSING, DONE = range(3)


def view(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """The app of ``instructions.py``'s middleware stacks, queuing nothing."""
    return bare_app(environ, start_response)


def nothing() -> None:
    """No callbacks to wait for."""


class Response:
    """The least response wrapper with a chain's bookkeeping."""

    __slots__ = ("_start_response", "callbacks", "closed_at", "completed", "environ", "error",
                 "file_response", "inner", "iterator", "max_callbacks", "notes", "once",
                 "runner", "scope", "started", "state", "status", "token")  # fmt: skip

    _start_response: t.Any
    callbacks: list[object]
    closed_at: float
    completed: bool
    environ: WSGIEnvironment | None
    error: BaseException | None
    file_response: object
    inner: t.Iterable[bytes]
    iterator: t.Iterator[bytes]
    max_callbacks: int
    notes: int
    once: list[None]
    runner: object
    scope: object
    started: int
    state: int
    status: str | None
    token: contextvars.Token[object] | None

    def __iter__(self) -> t.Iterator[bytes]:
        self.iterator = iterator = iter(self.inner)
        return iterator

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], object]:
        write: t.Callable[[bytes], object] = self._start_response(status, headers)
        self.status = status
        return write

    def close(self) -> None:
        try:
            self.once.pop()
        except IndexError:
            return
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()

    def on_close(self) -> None:
        if self.state != OPEN:
            return
        self.state = CLOSING
        token = self.token
        if token is not None:
            self.token = None
            try:  # noqa: SIM105 (as the library does)
                _CURRENT.reset(token)
            except ValueError:
                pass
        if not self.callbacks:
            self.state = DONE
            self.environ = self._start_response = None
            self.inner = ()


class SizedResponse(Response):
    __slots__ = ()


class ClassResponse(Response):
    """:class:`Response` made the way a class is: ``__init__`` and ``wrap()``."""

    __slots__ = ()

    def __init__(self, environ: WSGIEnvironment, runner: object, start_response: t.Any) -> None:
        self.once = [None]
        self.completed = False
        self.callbacks = []
        self.environ = environ
        self.runner = runner
        self._start_response = start_response
        self.max_callbacks = 1000
        self.status = self.token = self.error = None
        self.scope = self.file_response = None
        self.started = self.notes = 0
        self.state = OPEN
        self.closed_at = 0.0

    def wrap(self, result: t.Iterable[bytes]) -> t.Iterable[bytes]:
        if result is self.file_response:
            return result
        self.inner = result
        if type(result) is list:
            self.__class__ = SizedClassResponse
        return self


class SizedClassResponse(ClassResponse):
    __slots__ = ()


def layered(level: int) -> tuple[WSGIApplication, Settle]:
    """A middleware function with the promises of rows ``0`` to ``level``."""
    current, status, file_wrapper, sized, fields = (level >= n for n in range(1, 6))

    def middleware(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        if "wsgi_after.chain" in environ:
            return view(environ, start_response)
        chain = _new(Response)
        chain.once = [None]
        chain.environ = environ
        chain._start_response = start_response
        chain.state = OPEN
        chain.callbacks = []
        chain.status = chain.token = None
        if fields:
            chain.runner = chain.error = chain.file_response = chain.scope = None
            chain.completed = False
            chain.started = chain.notes = 0
            chain.max_callbacks = 1000
            chain.closed_at = 0.0
        environ["wsgi_after.chain"] = chain
        if current:
            chain.token = _CURRENT.set(chain)
        file_class = environ.get("wsgi.file_wrapper") if file_wrapper else None
        try:
            result = view(environ, chain.start_response if status else start_response)
        except BaseException:
            chain.on_close()
            raise
        if type(result) is file_class:  # the server's own object: its close() hooked in place
            return result
        chain.inner = result
        if sized:
            chain.__class__ = SizedResponse
        return chain

    return middleware, nothing


class ClassMiddleware:
    """Row 5 with a class's shape: the chain made by ``__init__``, wrapped by ``wrap()``."""

    def __init__(self) -> None:
        self.runner = None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        if "wsgi_after.chain" in environ:
            return view(environ, start_response)
        chain = ClassResponse(environ, self.runner, start_response)
        environ["wsgi_after.chain"] = chain
        chain.token = _CURRENT.set(chain)
        file_class = environ.get("wsgi.file_wrapper")
        try:
            result = view(environ, chain.start_response)
        except BaseException:
            chain.on_close()
            raise
        if type(result) is file_class:
            return result
        return chain.wrap(result)


ROWS = [
    "a chain object per request: environ key, close() once, states",
    "+ the current-chain context variable, reset at close",
    "+ the status, recorded through a start_response wrapper",
    "+ the server's wsgi.file_wrapper objects returned as they are (a class's)",
    "+ len() for a sized body (a class switch)",
    "+ every field a chain keeps",
]


def _builder(level: int) -> t.Callable[[], tuple[WSGIApplication, Settle]]:
    return lambda: layered(level)


FLOOR: dict[str, Stack] = {
    f"floor-{level}": Stack(f"floor {level}: {label}", _builder(level), *PLAIN)
    for level, label in enumerate(ROWS)
}
FLOOR["floor-class"] = Stack(
    "floor 5 as a class: __init__ and wrap() as methods",
    lambda: (ClassMiddleware(), nothing),
    *PLAIN,
)
#: What the table shows: the rows, and the stacks they are read against.
COMPARED = ["bare", "wrapper", *FLOOR, "middleware-none"]
BEGIN, END = "<!-- floor:begin -->", "<!-- floor:end -->"


def register() -> None:
    """Add the rows to ``instructions.py``'s stacks; its counted processes then run this
    file, which knows them."""
    instructions.STACKS.update(FLOOR)
    instructions.SCRIPT = __file__


def section(counts: dict[str, float]) -> list[str]:
    """The RESULTS.md block of the table."""
    lines = [
        "### What a request that queues nothing costs, promise by promise",
        "",
        "`python benchmarks/floor.py` counts, the same way, middlewares stripped down to a"
        " few promises and built up one promise at a time, written as plainly as Python"
        " allows (one function, every field set inline), beside `AfterMiddleware`. Each"
        " row's increase is the least that promise costs. The shape of a class (`__init__`"
        " and `wrap()` as methods) adds the next row; `AfterMiddleware`'s own checks"
        " (nested middleware, the hand-over lock's mark, other servers' file-wrapper path,"
        " releasing the body at close) the rest. (Counted by another script than the table"
        " above, the same stack may count up to 0.2k apart: memory layout.)",
        "",
        "| stack | instructions / request |",
        "|---|---|",
    ]
    lines += [f"| {instructions.STACKS[name].label} | {kilo(n)} |" for name, n in counts.items()]
    return [BEGIN, *lines, END]


def kilo(n: float) -> str:
    return f"{n / 1000:.1f}k"


def main(argv: list[str]) -> int:
    register()
    if argv[:1] == ["--workload"]:  # a counted process
        return instructions.main(argv)
    counts = instructions.measure(COMPARED)
    lines = section(counts)
    print("\n".join(lines[1:-1]))
    if argv == ["--write"]:
        text = instructions.RESULTS.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        instructions.RESULTS.write_text(text[:start] + "\n".join(lines) + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
