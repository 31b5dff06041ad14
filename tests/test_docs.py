"""The documentation site (docs/): every log line explained, every public name in the reference,
a build without warnings, and pages that a real browser renders.

The log-message check is static: it reads every ``logger.<level>(...)``, ``warnings.warn(...)``
and ``LossLog(reason)`` call of ``wsgi_after/`` with :mod:`ast`, so a message added to the code
without its entry on docs/log-messages.md fails here, before anyone meets it in a log.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
import shutil
import subprocess
import sys
import types
import typing as t
import zlib

import pytest

import wsgi_after

ROOT = pathlib.Path(__file__).parent.parent
PACKAGE = pathlib.Path(wsgi_after.__file__).parent  # the installed one (.ci/package: a wheel)
DOCS = ROOT / "docs"
LOG_PAGE = DOCS / "log-messages.md"

LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
}


class Message(t.NamedTuple):
    """One message the code logs: its format string (f-string fields as ``{expr}``) and level."""

    text: str
    level: str


def literal(node: ast.expr, where: str) -> str:
    """The text of a message argument: a string literal, or an f-string with ``{expr}`` fields."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                assert isinstance(value, ast.FormattedValue)
                field = ast.unparse(value.value)
                if value.conversion != -1:
                    field += "!" + chr(value.conversion)
                if value.format_spec is not None:
                    field += ":" + literal(value.format_spec, where)
                parts.append("{" + field + "}")
        return "".join(parts)
    raise AssertionError(
        f"{where}: log a literal format string (not {ast.unparse(node)!r}), so that"
        " docs/log-messages.md can be checked against it."
    )


def logger_names(tree: ast.Module) -> set[str]:
    """Names bound to ``logging.getLogger(...)`` anywhere in a module."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "logging.getLogger"
        ):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def code_messages() -> dict[Message, list[str]]:
    """Every message ``wsgi_after/`` logs or warns, with where each is emitted."""
    found: dict[Message, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        loggers = logger_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            func = node.func
            message = None
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in loggers
                and func.attr in LEVELS
            ):
                message = Message(literal(node.args[0], where), LEVELS[func.attr])
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == "log"
                and (isinstance(func.value, ast.Name) and func.value.id in loggers)
            ):
                level = ast.unparse(node.args[0]).removeprefix("logging.")
                message = Message(literal(node.args[1], where), level)
            elif ast.unparse(func) in ("warnings.warn", "warn"):
                category = ast.unparse(node.args[1]) if len(node.args) > 1 else "UserWarning"
                message = Message(literal(node.args[0], where), category)
            elif ast.unparse(func) == "LossLog":  # the reason that ends each of its ERROR lines
                message = Message(literal(node.args[0], where), "ERROR")
            if message is not None:
                found.setdefault(message, []).append(where)
        for node in ast.walk(tree):  # a LossLog's reason set later: ``log.reason = "..."``
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.JoinedStr | ast.Constant)
                and any(
                    isinstance(target, ast.Attribute) and target.attr == "reason"
                    for target in node.targets
                )
            ):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                message = Message(literal(node.value, where), "ERROR")
                found.setdefault(message, []).append(where)
    return found


def page_messages() -> dict[Message, str]:
    """The entries of docs/log-messages.md: each ``text`` block, the level that follows it,
    and the label ``(log-...)=`` of its section."""
    entries: dict[Message, str] = {}
    label = ""
    lines = LOG_PAGE.read_text().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"\(log-[a-z0-9-]+\)=", line):
            label = line[1:-2]
        elif line == "```text":
            end = lines.index("```", i + 1)
            text = "\n".join(lines[i + 1 : end])
            level = next(ln for ln in lines[end + 1 :] if ln.strip()).split()[0].strip("*:.,")
            assert label, f"the entry {text!r} has no '(log-...)=' label above it"
            entries[Message(text, level)] = label
            i = end
        i += 1
    return entries


def test_every_logged_message_has_an_entry() -> None:
    missing = {m: where for m, where in code_messages().items() if m not in page_messages()}
    assert not missing, "docs/log-messages.md lacks an entry (message, then its level) for:\n" + (
        "\n".join(f"  {m.level} {m.text!r} ({', '.join(w)})" for m, w in missing.items())
    )


def test_every_entry_is_a_message_the_code_logs() -> None:
    stale = set(page_messages()) - set(code_messages())
    assert not stale, "docs/log-messages.md explains messages the code no longer logs:\n" + (
        "\n".join(f"  {m.level} {m.text!r}" for m in stale)
    )


def test_entries_have_distinct_labels() -> None:
    labels = list(page_messages().values())
    assert len(labels) == len(set(labels)), labels


def test_every_django_check_has_an_entry() -> None:
    ids = {
        found
        for path in PACKAGE.rglob("*.py")
        for found in re.findall(r'"(wsgi_after\.[EW]\d{3})"', path.read_text())
    }
    assert len(ids) >= 4, ids  # E001 to E004 today: the pattern still finds them
    page = LOG_PAGE.read_text()
    assert [i for i in sorted(ids) if f"`{i}`" not in page] == []


# The built site: no warning, every public name in the reference, rendered by a browser.

#: The modules whose public names the API reference documents (docs/api/), and those that are
#: not in it, each with why: a public name there is a seam between the library's own modules.
REFERENCE_MODULES = [
    "wsgi_after",
    "wsgi_after.flask",
    "wsgi_after.django",
    "wsgi_after.django.tasks",
    "wsgi_after.celery",
    "wsgi_after.remote",
    "wsgi_after.allowlist",
    "wsgi_after.events",
    "wsgi_after.callback_stats",
    "wsgi_after.otel",
    "wsgi_after.prometheus",
    "wsgi_after.gunicorn",
    "wsgi_after.uwsgi",
    "wsgi_after.mod_wsgi",
    "wsgi_after.lifecycle",
    "wsgi_after.pytest_plugin",
    "wsgi_after.demo",
]
NOT_IN_REFERENCE = {
    "wsgi_after.middleware": "AfterMiddleware, documented as wsgi_after.AfterMiddleware",
    "wsgi_after.runner": "the runners, documented under wsgi_after",
    "wsgi_after.sigterm": "exit_on_sigterm, documented as wsgi_after.exit_on_sigterm",
    "wsgi_after.naming": "log-safe names: a helper of the library's own modules",
    "wsgi_after.losslog": "aggregated loss lines: a helper of the library's own modules",
}
DJANGO_SUBMODULES = "the pieces of wsgi_after.django, whose exports the reference documents"
NOT_IN_REFERENCE.update(
    {
        f"wsgi_after.celery.{name}": "the pieces of wsgi_after.celery, whose exports it documents"
        for name in ("message", "policy", "publisher", "worker")
    }
)
NOT_IN_REFERENCE.update(
    {
        f"wsgi_after.django.{name}": DJANGO_SUBMODULES
        for name in (
            "tasks.backend",
            "tasks.compat",
            "tasks.runner",
            "tasks.worker",
            "tasks.envelope",
            "apps",
            "checks",
            "conf",
            "database",
            "inline",
            "middleware",
            "placement",
            "runner",
            "startup",
            "testing",
            "transaction",
        )
    }
)

BUILD_HINT = (
    "build it with: python -m pip install -e '.[docs]'"
    " && python -m sphinx -W -n -b html docs docs/_build/html"
)
CHROMIUM_HINT = "install Chromium (as root): apt-get update && apt-get install -y chromium"


def public_names(module: types.ModuleType) -> list[str]:
    """A module's ``__all__``, or else the functions, classes and pytest fixtures it defines
    under names without a leading underscore."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value) or is_fixture(value))
        and getattr(value, "__module__", None) == module.__name__
    ]


def is_fixture(value: object) -> bool:
    """A pytest fixture (a function before pytest 8.4, this type since)."""
    return type(value).__name__ == "FixtureFunctionDefinition"


def test_every_module_is_in_the_reference_or_says_why_not() -> None:
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    }
    public = {m for m in modules if not any(part.startswith("_") for part in m.split("."))}
    assert public == set(REFERENCE_MODULES) | set(NOT_IN_REFERENCE)


def inventory(html: pathlib.Path) -> set[str]:
    """The names of the Python objects in the build's ``objects.inv`` (Sphinx's inventory)."""
    data = (html / "objects.inv").read_bytes()
    body = data.split(b"\n", 4)[4]  # four header lines, then zlib
    names = set()
    for line in zlib.decompress(body).decode().splitlines():
        name, role = line.split(" ", 2)[:2]
        if role.startswith("py:"):
            names.add(name)
    return names


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The site, built as CI builds it (warnings are errors, every reference must resolve)."""
    out = tmp_path_factory.mktemp("docs")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-n",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(DOCS),
            str(out / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{BUILD_HINT}"
    return out / "html"


@pytest.mark.timeout(600)
def test_the_site_builds_without_a_warning(html: pathlib.Path) -> None:
    assert (html / "index.html").is_file()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("module_name", REFERENCE_MODULES)
def test_every_public_name_is_in_the_reference(html: pathlib.Path, module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = public_names(module)
    assert names, module_name
    documented = inventory(html)
    missing = [n for n in names if f"{module_name}.{n}" not in documented]
    assert missing == [], f"not in the API reference (docs/api/): {missing}"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found is not None, f"Chromium is not on the PATH: {CHROMIUM_HINT}"
    return found


def browse(page: pathlib.Path, tmp_path: pathlib.Path, *args: str) -> str:
    """Open ``page`` in headless Chromium (a profile of its own, nothing fetched): stdout."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # as root, as CI runs
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,900",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


#: Pages opened in the browser, and what each must show once rendered: its title, the
#: navigation, a code block, and (the API page) the anchors of public names.
RENDERED = {
    "index.html": [
        "<title>wsgi_after",
        "sidebar-tree",
        'href="getting-started.html"',
        'href="guides/flask.html"',
        "highlight-sh",
    ],
    "guides/flask.html": [
        "<title>Flask",
        "sidebar-tree",
        'href="django.html"',
        'href="../api/index.html"',
        "highlight-python",
        "wsgi_after.flask",
    ],
    "guides/django.html": [
        "<title>Django",
        "sidebar-tree",
        'href="flask.html"',
        'href="../api/index.html"',
        "highlight-python",
        "after_commit",
    ],
    "api/core.html": [
        "<title>",
        'id="wsgi_after.AfterMiddleware"',
        'id="wsgi_after.after"',
        'id="wsgi_after.ThreadRunner"',
        'id="wsgi_after.outcome"',
    ],
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(RENDERED))
def test_a_browser_renders_the_page(html: pathlib.Path, tmp_path: pathlib.Path, name: str) -> None:
    dom = browse(html / name, tmp_path, "--dump-dom")
    missing = [needle for needle in RENDERED[name] if needle not in dom]
    assert missing == [], f"{name} rendered without {missing}"


@pytest.mark.timeout(600)
def test_a_screenshot_of_a_guide_is_a_picture(html: pathlib.Path, tmp_path: pathlib.Path) -> None:
    shot = tmp_path / "flask.png"  # a temporary directory: screenshots stay out of the tree
    browse(html / "guides/flask.html", tmp_path, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000, len(data)  # a blank page compresses to a few kilobytes
