"""Every Python block in README.md and in the documentation (docs/**/*.md) runs as written,
and passes ``mypy --strict``.

A block whose first line is ``# test_<name>.py ...`` is a test module: it is run with pytest.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page: pathlib.Path) -> list[str]:
    """The ```` ```python ```` blocks of one Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)


#: Each block, and its test id: the page and the block's index in it (``README.md:0``).
BLOCKS: list[str] = []
IDS: list[str] = []
for _page in PAGES:
    for _i, _block in enumerate(python_blocks(_page)):
        BLOCKS.append(_block)
        IDS.append(f"{_page.relative_to(ROOT).as_posix()}:{_i}")


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks(README)) >= 2


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) - len(python_blocks(README)) >= 10


@pytest.mark.parametrize("code", [pytest.param(b, id=i) for i, b in zip(IDS, BLOCKS, strict=True)])
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


PYPROJECT = ROOT / "pyproject.toml"


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Run ``mypy --strict`` once over every block (one file each); its errors by file."""
    folder = tmp_path_factory.mktemp("readme_blocks")
    names = [f"readme_block{i}.py" for i in range(len(BLOCKS))]
    for name, code in zip(names, BLOCKS, strict=True):
        (folder / name).write_text(code)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(PYPROJECT),
            "--cache-dir",
            str(folder / ".mypy_cache"),
            "--no-error-summary",
            *names,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # mypy cannot see editable installs
    )
    errors: dict[str, list[str]] = {name: [] for name in names}
    for line in done.stdout.splitlines():
        name = line.split(":", 1)[0]
        if name not in errors:  # a message not about one block: fail every block with it
            for lines in errors.values():
                lines.append(line)
        else:
            errors[name].append(line)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert done.returncode == 0 or any(errors.values()), done.stdout + done.stderr
    return errors


@pytest.mark.parametrize("index", [pytest.param(i, id=name) for i, name in enumerate(IDS)])
def test_readme_block_passes_mypy_strict(index: int, mypy_errors: dict[str, list[str]]) -> None:
    errors = mypy_errors[f"readme_block{index}.py"]
    assert errors == [], "\n".join(errors)
