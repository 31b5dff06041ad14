# A gunicorn.conf.py using the optional hooks, as docs/guides/gunicorn.md shows.
from wsgi_after.gunicorn import install

install(globals())
