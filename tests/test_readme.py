"""Every Python block in README.md runs as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", [pytest.param(b, id=f"block{i}") for i, b in enumerate(BLOCKS)])
def test_readme_block_runs(code: str, tmp_path: pathlib.Path) -> None:
    # waitress leaves its own sockets to the garbage collector at exit: not ours to fix.
    command = [sys.executable, "-W", "error", "-W", "ignore::ResourceWarning", "-c", code]
    first_line = code.splitlines()[0]
    if first_line.startswith("# test_"):  # a test module: run it with pytest, as it says
        name = first_line.split()[1]
        (tmp_path / name).write_text(code)
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", name]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
