"""Model families as plugins: one module each, one registry map.

`FAMILIES` maps a family's name (its `train:` key in params.yaml, its file prefix in
`models/native` and `models/onnx`, the prefix of its candidates) to its `Family` object.
Adding a family: write `driftloop/families/<name>.py` with a `FAMILY` object following
`driftloop.families.base.Family`, add it here, and give it a `train.<name>` section.
"""

from __future__ import annotations

from driftloop.families import hgb, logreg, mlp
from driftloop.families.base import Candidate, CandidateContext, Family, FamilyParams

FAMILIES: dict[str, Family] = {f.name: f for f in (hgb.FAMILY, mlp.FAMILY, logreg.FAMILY)}

FAMILIES_FILE = "families.json"  # in models/native: the families the train stage fitted, in order

__all__ = ["FAMILIES", "FAMILIES_FILE", "Candidate", "CandidateContext", "Family", "FamilyParams"]
