"""The lock: ``constraints.txt`` pins every package of the ``test`` and ``dev`` extras
(``nox -s lock`` refreshes it), README's test command and CI install from it, and the
library's own requirements stay open ranges."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re

ROOT = pathlib.Path(__file__).parent.parent
#: Each extra's requirements, as built from pyproject.toml (``name>=x; extra == "test"``).
REQUIRES = importlib.metadata.metadata("wsgi-after").get_all("Requires-Dist") or []
LOCK = (ROOT / "constraints.txt").read_text()


def extra(which: str) -> list[str]:
    return [r.split(";")[0] for r in REQUIRES if f'extra == "{which}"' in r]


def name(requirement: str) -> str:
    """A requirement's normalised project name (``celery[redis]>=5.3`` -> ``celery``)."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pinned() -> set[str]:
    return {name(line) for line in LOCK.splitlines() if re.match(r"^[A-Za-z0-9]\S*==", line)}


def test_the_lock_pins_every_package_of_the_test_and_dev_extras() -> None:
    wanted = {name(r) for which in ("test", "dev", "bench") for r in extra(which)}
    assert wanted - {"wsgi-after"} - pinned() == set()


def test_readme_and_ci_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python -m pip install -e '.[test]' -c constraints.txt && python -m pytest" in readme
    assert "python -m pip install -e '.[dev]' -c constraints.txt" in readme
    assert "nox -s lock" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install --quiet -e '.[dev]' -c constraints.txt" in ci
    assert "nox -s newest" not in ci  # a new upstream release must not fail a landing


def test_the_library_requires_open_ranges() -> None:
    users = [r for r in REQUIRES if "extra ==" in r and not re.search('"(test|dev|bench)"', r)]
    assert len(users) >= 7  # flask, gunicorn, demo (2), celery, django, otel, prometheus
    assert [r for r in REQUIRES if "extra ==" not in r] == []  # the core needs nothing
    assert [r for r in users if "==" in r.split(";")[0]] == []
