"""Sphinx configuration of the documentation site.

Build it with ``python -m sphinx -W -n -b html docs docs/_build/html`` (the ``docs`` extra).
Nothing is fetched at build time: no intersphinx, so the standard library's and third-party
types that only an inventory could resolve are listed in ``nitpick_ignore_regex`` below.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports the checkout's wsgi_after

project = "wsgi_after"
author = "The wsgi_after maintainers"
copyright = "the wsgi_after maintainers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # README-style links to a heading: [x](page.md#a-heading)
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = "wsgi_after"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

nitpicky = True
# Types that only intersphinx could resolve (the standard library's and third-party packages'),
# whose references stay plain text: the build is offline. Names imported only for type checking
# appear bare in signatures (``WSGIEnvironment``, ``Flask``), hence the bare names.
_STDLIB = (
    r"(builtins\.)?(str|int|float|bool|bytes|object|type|list|dict|tuple|set|frozenset|None"
    r"|BaseException|Exception|RuntimeError|TypeError|ValueError|TimeoutError|NoneType)"
    r"|(typing|typing_extensions|collections|collections\.abc|concurrent\.futures|contextvars"
    r"|contextlib|threading|types|logging|asyncio|queue|signal|t|_typeshed\.wsgi|_typeshed"
    r"|pathlib|enum|weakref|inspect|sys|os|socket|multiprocessing)(\..+)?"
    r"|Callable|Iterable|Iterator|Mapping|Sequence|Awaitable|Coroutine|Generator|Any|ParamSpec"
    r"|TypeVar|Context|ContextVar|Future|Executor|Thread|Logger|TracebackType|FrameType"
    r"|WSGIApplication|WSGIEnvironment|StartResponse|OptExcInfo"
    r"|'[^']*'"  # the values of a typing.Literal, e.g. on_full's 'block'
)
_THIRD_PARTY = (
    r"(flask|werkzeug|django|django_tasks|celery|kombu|opentelemetry|prometheus_client|pytest|_pytest"
    r"|gunicorn|uwsgi|mod_wsgi)(\..+)?"
    r"|Flask|HttpRequest|HttpResponseBase|HttpResponse|Celery|Signature|CollectorRegistry"
    r"|Gauge|Counter|Histogram|Meter|Tracer|Span|FixtureRequest|Item|TempPathFactory"
    r"|TaskResult|TaskContext|InvalidTask|BaseTaskBackend"  # django.tasks (or its backport)
)
# Private names (``wsgi_after._chain.Callback``, the type variables): not in the reference by
# design, so a signature that names one shows it as text.
# (``TypeAliasForwardRef``: how Sphinx 9 names an alias of autodoc_type_aliases inside a generic.)
_PRIVATE = (
    r"TypeAliasForwardRef|wsgi_after(\.[a-z_]+)*\._[A-Za-z_]+(\..+)?"
    r"|Callback|Entry|Scope|P|R|T|RunnerT|wsgi_after\.middleware\.RunnerT"
)
# A type alias is documented as data, and Sphinx before 9 resolves a class reference to
# classes only (a parameter typed ``DeadLetter``): Sphinx 9 links it, older ones show text.
# ``OnFull`` is ``Literal["block", "run", "drop"]`` (wsgi_after.runner), spelled out in the
# docstrings of the options that take it.
_ALIASES = r"DeadLetter|wsgi_after\.celery\.DeadLetter|OnFull|wsgi_after\.runner\.OnFull"
nitpick_ignore_regex = [
    ("py:class", _ALIASES),
    (r"py:(class|obj|exc|data|func|meth|attr|mod)", _STDLIB),
    (r"py:(class|obj|exc|data|func|meth|attr|mod)", _THIRD_PARTY),
    (r"py:(class|obj|exc|data|func|meth|attr|mod)", _PRIVATE),
]
# Names that annotations use under another name: link them to their documented home.
autodoc_type_aliases = {
    "Submits": "wsgi_after.runner.Submits",
    "DeadLetter": "wsgi_after.celery.DeadLetter",
}
