"""The one place that reaches into the core until its public seams land (see SEAMS.md).

After the core rewrite, :func:`current_chain` is ``wsgi_after.current_chain`` and
:func:`callback_name` is ``wsgi_after.naming.callback_name``; only this module changes.
"""

from __future__ import annotations

from .._chain import OPEN, Chain, _in_callback
from .._chain import _current as _current_chain
from .._chain import callback_name as callback_name

__all__ = ["Chain", "callback_name", "current_chain"]


def current_chain() -> Chain | None:
    """The chain that ``after()`` would append to now, else None."""
    chain = _current_chain.get()
    if chain is None or (chain.state != OPEN and not _in_callback(chain)):
        return None
    return chain
