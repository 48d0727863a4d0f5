"""`reports/gate.json`, typed: the one reader and writer of the gate's verdict.

The contract users rely on (DESIGN.md): `rules` (each: name, value, threshold, passed, reason),
`chosen`, `verdict`. The gate stage writes it through `GateReport.write`; the package stage, the
training flow and the release plane read it (or the copy inside a package's model card) through
`GateReport.read` / `GateReport.model_validate`, never as an untyped dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from driftloop.checks import Check
from driftloop.errors import DriftloopError
from driftloop.io import read_json, write_json
from driftloop.paths import GATE_REPORT

__all__ = ["GATE_REPORT", "CandidateVerdict", "GateCheck", "GateReport", "GateReportError"]

HEADLINE_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")


class GateReportError(DriftloopError):
    """`reports/gate.json` is missing or does not follow the contract."""


class GateCheck(Check):
    """One gate rule applied to one candidate (`Check` plus the candidate's name).

    `value` and `threshold` are in the rule's `unit` (ROC AUC in [0, 1], ms, bytes, probability).
    """

    candidate: str | None = None


class CandidateVerdict(BaseModel):
    """Every rule of one candidate, with the two figures the ranking uses."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    rules: list[GateCheck]
    rows_per_s: float  # rows/s at batch `throughput_batch`, one thread (measured by the gate stage)
    size_bytes: int
    p50_ms: float | None = None  # batch-1 latency, one thread (ms); None in reports from before the gate timed it
    p99_ms: float | None = None


class GateReport(BaseModel):
    """The gate's decision.

    Attributes:
        verdict: "pass" when a candidate passed every rule, else "reject".
        chosen: the cheapest passing candidate (highest rows/s, then smallest file); None on reject.
        chosen_metrics: that candidate's test metrics (`HEADLINE_METRICS`), None on reject.
        rules: the chosen candidate's checks, or on reject every candidate's failed checks.
        candidates: every candidate's checks.
        ranking: passing candidates, cheapest first.
        champion: the champion's lineage (`{"lineage_id": ...}`) when one was scored.
    """

    model_config = ConfigDict(frozen=True)

    verdict: Literal["pass", "reject"]
    chosen: str | None = None  # defaults: a model card's `gate` block from before this model had no `chosen`
    chosen_metrics: dict[str, float] | None = None
    rules: list[GateCheck] = []
    candidates: dict[str, CandidateVerdict] = {}
    ranking: list[str] = []
    champion: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """True when the verdict is "pass" (the gate then always names `chosen`)."""
        return self.verdict == "pass"

    def failed_lines(self) -> list[str]:
        """`"candidate: rule: reason"` for every failed rule, in report order."""
        return [
            f"{r.candidate or self.chosen or '?'}: {r.name}: {r.reason}" for r in self.rules if not r.passed
        ]

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> GateReport:
        """Read and check a gate report.

        Raises:
            GateReportError: the file is missing, not JSON, or breaks the contract (one line, naming the field).
        """
        path = Path(path)
        if not path.is_file():
            raise GateReportError(f"{path}: no gate report; run the gate stage (`dvc repro gate`)")
        try:
            raw = read_json(path)
        except ValueError as exc:
            raise GateReportError(f"{path}: not JSON ({exc}); rerun the gate stage") from None
        return cls.parse(raw, where=str(path))

    @classmethod
    def parse(cls, raw: Any, where: str = "gate report") -> GateReport:
        """Validate an in-memory report (e.g. the `gate` block of a model card).

        Raises:
            GateReportError: naming the first bad field.
        """
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise GateReportError(f"{where}: {key}: {err['msg']}; rerun the gate stage") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically as JSON (None kept as null)."""
        write_json(path, self.model_dump(mode="json"))
