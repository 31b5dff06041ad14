"""Mutation score of the core: run mutmut, then count, minus the equivalent mutants.

The core modules (``_context``, ``_chain``, ``_execute``, ``_request``, ``_response``,
``runner``, ``_pool``, ``_worker``, ``_watchdog``, ``middleware``) and the
Flask extension (``flask``; see ``[tool.mutmut]`` in pyproject.toml) are mutated
one small change at a time, and the unit tests must fail for each change. A
mutant that no test can tell from the original (an equivalent mutant) is listed,
with its reason, in ``EQUIVALENT.md`` beside this file and left out of the
score. Exits 1 below ``--min`` percent::

    python tests/mutation/score.py            # all of them (about an hour on 2 cores)
    python tests/mutation/score.py --subset   # CI: _response and middleware (a few minutes)
    python tests/mutation/score.py --module flask   # one module alone (about 2 minutes)

Afterwards ``mutmut results`` lists the survivors and ``mutmut show NAME`` shows one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EQUIVALENT = pathlib.Path(__file__).with_name("EQUIVALENT.md")
#: The core, whose score is the gate.
CORE = (
    "wsgi_after._context.*",
    "wsgi_after._chain.*",
    "wsgi_after._execute.*",
    "wsgi_after._request.*",
    "wsgi_after._response.*",
    "wsgi_after.runner.*",
    "wsgi_after._pool.*",
    "wsgi_after._worker.*",
    "wsgi_after._watchdog.*",
    "wsgi_after.middleware.*",
    "wsgi_after.flask.*",
)
#: What CI mutates: the smaller modules, whose tests run fast.
SUBSET = ("wsgi_after._response.*", "wsgi_after.middleware.*")
KILLED = {"killed", "timeout", "segfault"}  # a test failed, hung or crashed
NOT_COUNTED = {"skipped"}


def equivalent_keys() -> set[tuple[str, str]]:
    """``(function, mutated text)`` of the entries ``- `function` `text`: reason`` in
    EQUIVALENT.md: keyed by what changed, not by mutmut's numbering, so that an entry
    survives its function moving to another module (or gaining other mutants)."""
    found = re.findall(r"^- `([^`]+)` `([^`]*)`:", EQUIVALENT.read_text(), re.MULTILINE)
    return {(function, " ".join(text.split())) for function, text in found}


def key(name: str, path: pathlib.Path) -> tuple[str, str]:
    """``(Class.function or function, the mutant's changed lines)`` of mutant ``name``
    of the source file ``path`` (relative to the root)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    function, cls = orig_function_and_class_names_from_key(name)
    diff = get_diff_for_mutant(name, path=path)
    added = [line[1:] for line in diff.splitlines() if line[:1] == "+" and line[:3] != "+++"]
    text = " / ".join(" ".join(line.split()) for line in added)
    return (f"{cls}.{function}" if cls else function), text


def results(patterns: tuple[str, ...]) -> dict[str, tuple[str, pathlib.Path]]:
    """Status and source file by mutant name, from mutmut's files, for names matching
    ``patterns``."""
    import fnmatch

    from mutmut.stats import status_by_exit_code

    statuses: dict[str, tuple[str, pathlib.Path]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        source = meta.relative_to(ROOT / "mutants").with_suffix("")  # drop .meta
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in exit_codes.items():
            if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
                status = "not run" if code is None else status_by_exit_code[code]
                statuses[name] = (status, source)
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", action="store_true", help="only " + ", ".join(SUBSET))
    parser.add_argument("--min", type=float, default=90.0, help="least score, percent")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run at once")
    parser.add_argument("--no-run", action="store_true", help="count the last run's results")
    parser.add_argument(
        "--module", help="score this one module instead (e.g. flask); its run is separate"
    )
    options = parser.parse_args()
    os.chdir(ROOT)  # mutmut reads its files relative to the project
    if options.module:
        patterns: tuple[str, ...] = (f"wsgi_after.{options.module}.*",)
    else:
        patterns = SUBSET if options.subset else CORE
    if not options.no_run:
        command = ["mutmut", "run", "--max-children", str(options.max_children), *patterns]
        run = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if run.returncode:
            # mutmut's progress lines are many; its failing test run is at the end.
            tail = run.stdout.decode(errors="replace")[-6000:]
            print(tail, f"\n{' '.join(command)} exited with {run.returncode}", file=sys.stderr)
            return 1
    statuses = results(patterns)
    if not statuses:
        print("No mutmut results: run without --no-run first.", file=sys.stderr)
        return 1
    keys = equivalent_keys()
    # Only survivors are looked up (a diff each): a killed mutant needs no excuse.
    equivalent = {
        n
        for n, (status, source) in statuses.items()
        if status not in KILLED and key(n, source) in keys
    }
    counted = {
        n: status
        for n, (status, _) in statuses.items()
        if n not in equivalent and status not in NOT_COUNTED
    }
    killed = sum(s in KILLED for s in counted.values())
    score = 100.0 * killed / len(counted) if counted else 100.0
    survivors = sorted(n for n, s in counted.items() if s not in KILLED)
    for name in survivors:
        function, text = key(name, statuses[name][1])
        print(f"{counted[name]}: {name}  (- `{function}` `{text}`: ...)")
    listed = len(equivalent)
    print(
        f"mutation score {score:.1f} % ({killed} of {len(counted)} killed;"
        f" {listed} equivalent mutants left out, listed in {EQUIVALENT.name})"
    )
    if score < options.min:
        print(f"below {options.min} %: kill the survivors above, or list them as equivalent")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
