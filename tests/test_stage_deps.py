"""dvc.yaml and the code agree: each stage's deps list exactly the project modules its command runs.

A stage `python -m tasks.<stage>` runs `tasks/<stage>.py` and every `driftloop`/`tasks` module it
imports, directly or through others, at module level or inside a function (imports under
`if TYPE_CHECKING:` never run and do not count). If one is missing from `deps`, editing it would
not rerun the stage and `dvc.lock` would describe outputs the code no longer makes (issue 9,
item 7: editing `driftloop/schema.py` used to rerun only `features`). A listed module the stage
does not import reruns it for nothing. A folder may stand for all of its modules
(`driftloop/families`: a new family is then no edit here; `.dvcignore` keeps byte code out of
its hash).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("driftloop", "tasks")


def _module_file(name: str) -> Path | None:
    """The file of a project module (`driftloop.families.hgb`), or None for anything else."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path) -> set[Path]:
    """Project modules that `path` imports (package `__init__`s on the way included)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    out: set[Path] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            found = _module_file(".".join(parts[:i]))
            if found is not None:
                out.add(found)
    return out


def closure(start: Path) -> set[str]:
    """Every project module reachable from `start`, as paths relative to the repo root."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(imports_of(path) - seen)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(_stages()))
def test_stage_deps_list_every_module_its_command_imports(stage):
    spec = _stages()[stage]
    match = re.search(r"python -m (tasks\.\w+)", spec["cmd"])
    assert match, f"{stage}: cmd is not `python -m tasks.<stage>`"
    imported = closure(_module_file(match.group(1)))
    listed = {d for d in spec["deps"] if d.endswith(".py")}
    for folder in (d for d in spec["deps"] if d.startswith(PACKAGES) and (ROOT / d).is_dir()):
        listed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}  # a code folder: all of it
    assert sorted(imported - listed) == [], f"{stage}: add these to its deps in dvc.yaml"
    assert sorted(listed - imported) == [], f"{stage}: these deps are not imported by the stage"


def test_the_scanner_follows_function_level_and_package_imports():
    """`tasks.train` reaches the MLP family's code only inside functions, through the registry package."""
    reached = closure(ROOT / "tasks" / "train.py")
    assert {
        "driftloop/families/__init__.py",
        "driftloop/families/mlp.py",
        "driftloop/mlp.py",
        "driftloop/schema.py",
    } <= reached
    assert "driftloop/release.py" not in reached


def test_dvc_yaml_uses_the_shared_paths():
    """The paths stated once in driftloop/paths.py are the ones the stages write and read."""
    from driftloop.paths import CHAMPION_DIR, GATE_REPORT, PACKAGE_DIR

    stages = _stages()

    def written(stage: str) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in stages[stage].get(key, [])}

    assert GATE_REPORT in written("gate") and GATE_REPORT in stages["package"]["deps"]
    assert PACKAGE_DIR in written("package")
    assert f"--champion {CHAMPION_DIR}" in stages["evaluate"]["cmd"]
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]["flight-delay"]["path"] == PACKAGE_DIR


def test_no_plain_out_is_uncached():
    """Issue 11, "Speed": DVC skips its run-cache for a stage with a plain `cache: false` out (metrics
    and plots excepted), so going back to known params would rerun it instead of restoring it."""
    for stage, spec in _stages().items():
        if stage in ("validate", "features"):  # not run-cached yet: their reports (issue 11's other slices)
            continue
        plain = [next(iter(o)) for o in spec.get("outs", []) if isinstance(o, dict) and next(iter(o.values())).get("cache") is False]
        assert plain == [], f"{stage}: declare {plain} as metrics/plots, or cache them"
