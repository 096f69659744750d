"""The committed mutation report stays honest without running the mutation tool (too slow for CI).

For every module marked reviewed, the survivor count in the results table equals the number of
survivors listed, each listed survivor names a function that still exists in that module and
carries a reason, and the module is at or above the 90% goal.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
REPORT = ROOT / "benchmarks" / "mutation-report.md"
ROW = re.compile(
    r"^\| (gateway/\S+\.py) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| yes "
    r"\| `make mutation MUTANTS='(\S+)'` \|$"
)
SURVIVOR = re.compile(r"^\| (gateway\.[\w.]+?)\.(x\S+?)__mutmut_\d+ \| (.*) \|$")


def reviewed() -> dict[str, tuple[int, int, int]]:
    rows = {}
    for line in REPORT.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            path, mutants, killed, survived, no_test, percent, pattern = match.groups()
            rows[path] = (int(mutants), int(killed), int(survived))
            # The row is self-consistent, and its command re-runs exactly this module.
            assert int(killed) + int(survived) + int(no_test) <= int(mutants), path
            assert f"{100 * int(killed) / int(mutants):.1f}" == percent, path
            module = path.removesuffix(".py").replace("/", ".")
            assert fnmatch.fnmatchcase(f"{module}.x_f__mutmut_1", pattern), path
            assert not any(
                fnmatch.fnmatchcase(f"{other}.x_f__mutmut_1", pattern)
                for other in _modules()
                if other != module
            ), (path, pattern)
    return rows


def _modules() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    paths = pyproject["tool"]["mutmut"]["only_mutate"]
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


def test_every_mutated_module_has_a_row() -> None:
    text = REPORT.read_text(encoding="utf-8")
    for module in _modules():
        assert f"| {module.replace('.', '/')}.py |" in text, module


def survivors() -> list[tuple[str, str, str]]:
    found = []
    for line in REPORT.read_text(encoding="utf-8").splitlines():
        if match := SURVIVOR.match(line):
            found.append((match.group(1), match.group(2), match.group(3)))
    return found


def test_reviewed_modules_meet_the_goal() -> None:
    rows = reviewed()
    assert rows, "no reviewed module in the report"
    for path, (mutants, killed, survived) in rows.items():
        assert killed + survived <= mutants, path
        assert killed / mutants >= 0.9, path


def test_every_survivor_of_a_reviewed_module_is_listed_with_a_reason() -> None:
    rows = reviewed()
    listed = survivors()
    for path, (_, _, survived) in rows.items():
        module = path.removesuffix(".py").replace("/", ".")
        assert sum(1 for m, _, _ in listed if m == module) == survived, path
    for module, function, reason in listed:
        assert module.replace(".", "/") + ".py" in rows, module
        assert len(reason.strip()) > 20, (module, function)
        # xǁClassǁmethod or x_function: the function must still exist, or the entry is stale.
        name = function.split("ǁ")[-1] if "ǁ" in function else function.removeprefix("x_")
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        assert re.search(rf"def {re.escape(name)}\(", source), (module, function)
