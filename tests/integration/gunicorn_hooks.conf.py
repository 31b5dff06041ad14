# A gunicorn.conf.py using the optional hooks, as the README shows.
from wsgi_after.gunicorn import install

install(globals())
