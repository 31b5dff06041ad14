"""Where ``wsgi_after.django.AfterMiddleware`` sits in ``MIDDLEWARE``: one judgement, two readers.

The system checks (``wsgi_after.E002``, ``wsgi_after.E003``) and the line logged when
the app loads (:mod:`wsgi_after.django.startup`, for servers, where checks never run)
both call :func:`middleware_problem`, so they say the same thing::

    problem = middleware_problem(settings.MIDDLEWARE)
    if problem is not None:
        check_id, message = problem
"""

from __future__ import annotations

import collections.abc

#: The dotted paths that name the middleware (the package's re-export and the module's own).
MIDDLEWARE_PATHS = (
    "wsgi_after.django.AfterMiddleware",
    "wsgi_after.django.middleware.AfterMiddleware",
)
#: The fix, for both problems.
FIRST_HINT = (
    "Put 'wsgi_after.django.AfterMiddleware' first: MIDDLEWARE = ["
    "'wsgi_after.django.AfterMiddleware', ...]."
)


def middleware_problem(middleware: collections.abc.Iterable[str]) -> tuple[str, str] | None:
    """The check id and message when the middleware is missing or not first, else None.

    Positions are counted from 1, as a reader counts the lines of the list, and every
    entry above the middleware is named (each runs outside the request's callbacks).
    """
    entries = list(middleware)
    positions = [i for i, path in enumerate(entries) if path in MIDDLEWARE_PATHS]
    if not positions:
        return (
            "wsgi_after.E002",
            "'wsgi_after.django.AfterMiddleware' is not in MIDDLEWARE, so 'after()'"
            " raises 'OutsideRequestError' in views.",
        )
    if positions[0] != 0:
        above = [repr(path) for path in entries[: positions[0]]]
        names = above[0] if len(above) == 1 else f"{', '.join(above[:-1])} and {above[-1]}"
        return (
            "wsgi_after.E003",
            f"'wsgi_after.django.AfterMiddleware' is entry {positions[0] + 1} of MIDDLEWARE,"
            f" below {names}: middleware above it runs outside the request's callbacks, and"
            " one that replaces the response would keep them from ever running.",
        )
    return None
