"""Project-relative paths that several planes share, stated once.

`dvc.yaml` names the same paths in its stages' `cmd`/`outs` (DVC cannot import them);
`tests/test_stage_deps.py` checks that dvc.yaml agrees. Params defaults (`monitor`, `release`) use these too.
"""

from __future__ import annotations

SNAPSHOT_DIR = "data/snapshot"  # the dataset snapshot (snapshot stage); a rebuild pulls it, never remakes it
PACKAGE_DIR = "artifacts/model"  # the build plane's package (dvc.yaml `artifacts:` path)
CHAMPION_DIR = "champion/package"  # copy of the prod package; the evaluate stage scores it
LOG_DIR = "logs/predictions"  # the server's prediction log
GATE_REPORT = "reports/gate.json"  # the gate stage's verdict (driftloop.gate_report reads it)
