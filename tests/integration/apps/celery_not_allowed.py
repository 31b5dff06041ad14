"""A module outside the worker's allow list: importing it creates the marker file.

A forged message naming one of its functions must be refused before the worker
imports it.
"""

from __future__ import annotations

import os
import pathlib

pathlib.Path(os.environ["WSGI_AFTER_MARKER"]).touch()


def anything(*args: object) -> None:
    pathlib.Path(os.environ["WSGI_AFTER_MARKER"]).touch()
