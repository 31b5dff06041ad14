# A gunicorn.conf.py using the optional hooks, as the README shows.
from wsgi_after.gunicorn import post_fork, worker_exit  # noqa: F401
