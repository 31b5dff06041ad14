"""What ships: every module imports on its own, and the metadata says what PyPI users expect."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import wsgi_after

ROOT = pathlib.Path(__file__).parent.parent
METADATA = importlib.metadata.metadata("wsgi-after")  # as built from pyproject.toml
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(wsgi_after.__path__, prefix="wsgi_after.")
)


@pytest.mark.parametrize("module", MODULES)
def test_every_shipped_module_imports_in_a_fresh_interpreter(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGI_AFTER")}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_demo_app_names_the_fix_when_run_outside_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wsgi_after import _demo_app

    monkeypatch.delenv("WSGI_AFTER_DEMO_DB", raising=False)
    with pytest.raises(RuntimeError) as info:
        _demo_app.database()
    assert str(info.value) == (
        "'WSGI_AFTER_DEMO_DB' is not set. Run the demo with 'python -m wsgi_after.demo',"
        " which creates the database and sets it."
    )


def test_license_and_classifiers() -> None:
    assert METADATA["License-Expression"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    classifiers = set(METADATA.get_all("Classifier") or [])
    assert "Operating System :: OS Independent" in classifiers
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # the SPDX string says it
    versions = {c.rsplit(" ", 1)[1] for c in classifiers if c.count("::") == 2 and "3." in c}
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert METADATA["Requires-Python"] == ">=3.10"
    assert METADATA.get_all("Project-URL")
    assert METADATA["Author"]


def test_build_backend_accepts_the_spdx_license_string() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires = ["setuptools>=77"]' in pyproject


def test_celery_extra_does_not_force_a_broker() -> None:
    requires = METADATA.get_all("Requires-Dist") or []
    celery = [r for r in requires if r.startswith("celery") and 'extra == "celery"' in r]
    assert celery == ['celery>=5.3; extra == "celery"']
    assert 'celery[redis]>=5.3; extra == "test"' in requires  # the tests use Redis


def test_version_follows_semver_and_is_in_the_changelog() -> None:
    version = METADATA["Version"]
    parts = version.split(".")
    assert len(parts) == 3
    assert all(part.isdigit() for part in parts)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}] - " in changelog
    assert "## [0.2.0] - Unreleased" in changelog


def test_sdist_manifest_carries_the_whole_test_tree() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert "graft tests" in manifest
    assert any(line.startswith("include LICENSE") for line in manifest)
