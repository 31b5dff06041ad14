"""Run work after the response has been sent, in any WSGI app.

::

    from wsgi_after import AfterMiddleware, after

    def app(environ, start_response):
        after(send_audit_log, environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done\\n"]

    app = AfterMiddleware(app)
"""

from ._chain import override_runner as override_runner
from ._context import OutsideRequestError as OutsideRequestError
from ._context import after as after
from ._context import current_chain as current_chain
from ._context import outcome as outcome
from ._request import Outcome as Outcome
from ._request import RequestView as Chain  # 0.1's name: the view, not the class
from ._request import RequestView as RequestView

# lifecycle.shutdown and lifecycle.start, under the names the package exports them by.
from .lifecycle import shutdown as shutdown_runners
from .lifecycle import start as start_runners
from .middleware import AfterMiddleware as AfterMiddleware
from .runner import InlineRunner as InlineRunner
from .runner import PoolOptions as PoolOptions
from .runner import Runner as Runner
from .runner import RunnerStats as RunnerStats
from .runner import Task as Task
from .runner import ThreadRunner as ThreadRunner
from .sigterm import exit_on_sigterm as exit_on_sigterm

__all__ = [
    "AfterMiddleware",
    "Chain",
    "InlineRunner",
    "Outcome",
    "OutsideRequestError",
    "PoolOptions",
    "RequestView",
    "Runner",
    "RunnerStats",
    "Task",
    "ThreadRunner",
    "after",
    "current_chain",
    "exit_on_sigterm",
    "outcome",
    "override_runner",
    "shutdown_runners",
    "start_runners",
]
