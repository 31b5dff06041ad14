# A gunicorn.conf.py for wsgi_after.prometheus in multiprocess mode, as
# docs/guides/observability.md shows.
from wsgi_after.gunicorn import child_exit, post_fork, worker_exit  # noqa: F401
