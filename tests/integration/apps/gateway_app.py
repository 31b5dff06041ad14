"""``matrix_app`` behind the WSGI-to-ASGI gateways, for an ASGI server to serve.

``asgiref_app``: asgiref's ``WsgiToAsgi``, which (up to 3.13 at least) never calls
the response's ``close()``; ``a2wsgi_app``: a2wsgi's ``WSGIMiddleware``, which does.
"""

from __future__ import annotations

from a2wsgi import WSGIMiddleware
from asgiref.wsgi import WsgiToAsgi
from matrix_app import app

asgiref_app = WsgiToAsgi(app)  # type: ignore[no-untyped-call]
a2wsgi_app = WSGIMiddleware(app)
