"""Every Python block in README.md and in the documentation (docs/**/*.md) runs as written,
and passes ``mypy --strict``.

A block whose first line is ``# test_<name>.py ...`` is a test module: it is run with pytest.

A block whose first line names a file in a folder (``# shop/views.py``) is a file of
a project: it is written there, beside the others, in a copy of :data:`PROJECT` (the
files ``startproject`` would make). A block whose first line also says how to run it
(``# shop/tests.py -- run with: python manage.py test shop``) is run that way there.
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
PROJECT_FILE = re.compile(r"# (\w+/[\w/]+\.py)(?: -- run with: (.+))?$")


def project_file(code: str) -> tuple[str, str | None] | None:
    """The path of a project's file and how to run it, from the block's first line."""
    found = PROJECT_FILE.match(code.splitlines()[0])
    return None if found is None else (found[1], found[2])


#: The project around the pages' project files: what ``django-admin startproject
#: mysite`` and ``startapp shop`` make, with the README's settings (SQLite here).
PROJECT = {
    "manage.py": """
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
""",
    "mysite/__init__.py": "",
    "mysite/settings.py": """
SECRET_KEY = "readme"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "mysite.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "wsgi_after.django",
    "shop",
]
MIDDLEWARE = ["wsgi_after.django.AfterMiddleware"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
""",
    "mysite/urls.py": """
from django.urls import path

from shop import views

urlpatterns = [path("signup", views.signup), path("ping", views.ping)]
""",
    "shop/__init__.py": "",
    "pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n",
}


def write_project(folder: pathlib.Path) -> None:
    """:data:`PROJECT` and every project file of the pages, in ``folder``."""
    for name, text in PROJECT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text.lstrip())
    for code in BLOCKS:
        found = project_file(code)
        if found is not None:
            (folder / found[0]).parent.mkdir(parents=True, exist_ok=True)
            (folder / found[0]).write_text(code)


def test_readme_has_python_blocks() -> None:
    assert len(python_blocks(README)) >= 2


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) - len(python_blocks(README)) >= 10


def test_a_project_file_shown_on_two_pages_is_the_same_file() -> None:
    shown: dict[str, set[str]] = {}
    for code in BLOCKS:
        found = project_file(code)
        if found is not None:
            shown.setdefault(found[0], set()).add(code)
    assert {path: len(codes) for path, codes in shown.items() if len(codes) > 1} == {}


@pytest.mark.parametrize("code", [pytest.param(b, id=i) for i, b in zip(IDS, BLOCKS, strict=True)])
def test_readme_block_runs(code: str, tmp_path: pathlib.Path) -> None:
    # waitress leaves its own sockets to the garbage collector at exit: not ours to fix.
    command = [sys.executable, "-W", "error", "-W", "ignore::ResourceWarning", "-c", code]
    first_line = code.splitlines()[0]
    found = project_file(code)
    if found is not None:  # a project's file: its project runs it, as the block says
        path, how = found
        write_project(tmp_path)
        if how is None:  # a module of the project: compiled here, run by a test block
            compile(code, path, "exec")
            return
        program, *args = how.split()
        assert program == "python", how
        command = [sys.executable, *args]
        if args[:2] == ["-m", "pytest"]:
            command += ["-p", "no:cacheprovider", "-p", "no:randomly", "-q"]
    elif first_line.startswith("# test_"):  # a test module: run it with pytest, as it says
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
    write_project(folder)  # what a project's blocks import (shop.views)
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


# The first test sets up the module's fixture, one cold 'mypy --strict' run over every block
# (Django's, Flask's and Celery's stubs: over a minute on a loaded 2-core machine, which a
# fresh CI machine running beside other work took): its own deadline, not the 60 s default.
@pytest.mark.timeout(330)
@pytest.mark.parametrize("index", [pytest.param(i, id=name) for i, name in enumerate(IDS)])
def test_readme_block_passes_mypy_strict(index: int, mypy_errors: dict[str, list[str]]) -> None:
    errors = mypy_errors[f"readme_block{index}.py"]
    assert errors == [], "\n".join(errors)


def test_readme_logging_entry_gives_the_lines_a_time_level_and_logger() -> None:
    [code] = {b for b in BLOCKS if b.startswith("# settings.py") and '"wsgi_after"' in b}
    program = code + (
        "import logging.config\n"
        "logging.config.dictConfig(LOGGING)\n"
        "logging.getLogger('wsgi_after').error(\"Callback 'x' raised.\")\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(f"{stamp} ERROR wsgi_after Callback 'x' raised.\n", done.stderr), done
