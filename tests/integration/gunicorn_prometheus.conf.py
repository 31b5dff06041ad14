# A gunicorn.conf.py for wsgi_after.prometheus in multiprocess mode, as the README shows.
from wsgi_after.gunicorn import install

install(globals())  # child_exit too
