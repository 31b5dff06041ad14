"""Run the same ``after()`` callbacks on a Celery cluster: :class:`CeleryRunner`.

::

    from celery import Celery
    from wsgi_after import AfterMiddleware
    from wsgi_after.celery import CeleryRunner

    celery_app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    runner = CeleryRunner(celery_app, allow=["shop"])  # sets conf.wsgi_after_allow too
    app = AfterMiddleware(app, runner=runner)

Each request's chain is published as one message to the task
``wsgi_after.run_chain`` (a shared task: every Celery app of a process that
imports this package has it); a worker runs the callbacks in order, logging each
failure by name, with :func:`wsgi_after.outcome` working.

The package follows its trust boundary:

* :mod:`~wsgi_after.celery.policy`: what a worker may run (the rules are
  :mod:`wsgi_after.allowlist`'s, the one file to audit);
* :mod:`~wsgi_after.celery.message`: the message (:mod:`wsgi_after.remote`'s
  named and versioned record) and its kombu encoding;
* :mod:`~wsgi_after.celery.publisher`: :class:`CeleryRunner`, in the web process;
* :mod:`~wsgi_after.celery.worker`: the task that runs a message on a worker.

Safe by construction: a message names its callbacks, and the worker runs only
Celery tasks registered on it and module-level plain functions of the modules
its own configuration allows (``wsgi_after_allow``, never read from the message).
Anything else is refused before it is imported: a writer to the broker cannot
run ``os.system``. :func:`wsgi_after.after` refuses the same callbacks in the
request, with a :class:`TypeError` naming the fix.
"""

from .message import TASK_NAME as TASK_NAME
from .message import VERSION as VERSION
from .message import CallbackRef as CallbackRef
from .message import Message as Message
from .message import RemoteError as RemoteError
from .policy import ALLOW_KEY as ALLOW_KEY
from .policy import allowed_modules as allowed_modules
from .publisher import CeleryRunner as CeleryRunner
from .publisher import CeleryRunnerStats as CeleryRunnerStats
from .publisher import DeadLetter as DeadLetter
from .worker import run_chain as run_chain

__all__ = [
    "ALLOW_KEY",
    "TASK_NAME",
    "VERSION",
    "CallbackRef",
    "CeleryRunner",
    "CeleryRunnerStats",
    "DeadLetter",
    "Message",
    "RemoteError",
    "allowed_modules",
    "run_chain",
]
