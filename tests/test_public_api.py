"""The public API: what wsgi_after exports, and that the core needs nothing else."""

from __future__ import annotations

import inspect
import subprocess
import sys

import wsgi_after


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(wsgi_after).items()
        if not name.startswith("_") and not inspect.ismodule(value)  # submodules are not API
    }
    assert set(wsgi_after.__all__) == public
    assert wsgi_after.__all__ == sorted(wsgi_after.__all__)


def test_core_imports_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules);"
        "import wsgi_after, wsgi_after.middleware, wsgi_after.runner, wsgi_after.remote,"
        " wsgi_after.allowlist;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "print(sorted(new - sys.stdlib_module_names - {'wsgi_after'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
