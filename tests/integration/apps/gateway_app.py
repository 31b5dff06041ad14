"""``matrix_app`` behind the WSGI-to-ASGI gateways, for an ASGI server to serve.

``asgiref_app``: asgiref's ``WsgiToAsgi``, which (up to 3.13 at least) never calls
the response's ``close()``; ``a2wsgi_app``: a2wsgi's ``WSGIMiddleware``, which does.
"""

from __future__ import annotations

import importlib

from a2wsgi import WSGIMiddleware
from asgiref.wsgi import WsgiToAsgi

app = importlib.import_module("matrix_app").app  # a sibling module, by the server's path

asgiref_app = WsgiToAsgi(app)  # type: ignore[no-untyped-call]
a2wsgi_app = WSGIMiddleware(app)
