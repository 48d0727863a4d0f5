"""The package layers: `driftloop/` is the ground floor and imports nothing above it.

Read from the source (every `import` and `from ... import`, at any depth, including those inside
functions), so a function-level import cannot hide an upward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER = ("serving", "flows", "tasks", "commands")


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ground_floor_imports_nothing_above_it():
    upward = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & set(UPPER))
        for p in sorted((ROOT / "driftloop").rglob("*.py"))
    }
    upward = {k: v for k, v in upward.items() if v}
    assert upward == {}


def test_serving_imports_no_build_or_flow_code():
    """The server installs without the training stack: it must not reach into tasks/ or flows/."""
    upward = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & {"flows", "tasks", "commands"})
        for p in sorted((ROOT / "serving").rglob("*.py"))
    }
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_detector_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from serving.app import create_app\n    import flows.dag\n")
    assert imported_packages(src) == {"serving", "flows"}
