"""One result type for every rule-based decision: the gate, the canary analysis, the drift policy.

A `Check` is one rule applied once: its name, the measured value, the threshold it was held to,
the verdict, and one line for people. `reports/gate.json`, the canary's analysis and the drift
summary all carry lists of `Check`s, so one reader and one renderer serve them all.

A `Rule` declares a threshold rule as data (name, what is measured, comparison, unit); a table
of rules evaluated by one loop replaces an if-chain, so adding a rule is one row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Comparison = Literal["<=", ">=", "<", ">"]


class Check(BaseModel):
    """One rule applied once.

    Attributes:
        name: the rule's name, e.g. `min_roc_auc` (for gate rules, the `gates` key).
        value: the measured value in `unit`; None when it could not be measured.
        threshold: the bound it was held to, in `unit`; None for a rule without a numeric bound.
        passed: the verdict.
        reason: one line for people: what was measured, against what, and the verdict.
        unit: unit of `value` and `threshold` ("" when dimensionless), e.g. "ms", "B".
        subject: what was checked, when a report holds several (a gate candidate, a version).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    reason: str
    unit: str = ""
    subject: str | None = None


_HOLDS = {
    "<=": lambda v, t: v <= t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    ">": lambda v, t: v > t,
}
_FAILS = {"<=": ">", ">=": "<", "<": ">=", ">": "<="}


class Rule(BaseModel):
    """A threshold rule declared as data: `value <comparison> threshold` passes.

    Attributes:
        name: the rule's name (the params key that holds its threshold).
        what: what is measured, for the reason line, e.g. "p99 latency at batch 1".
        comparison: how the measured value must relate to the threshold to pass.
        unit: the unit of value and threshold ("" when dimensionless).
        missing_passes: verdict when the value cannot be measured (e.g. no champion yet).
        missing_reason: the reason line for a missing value.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    what: str
    comparison: Comparison
    unit: str = ""
    missing_passes: bool = False
    missing_reason: str = "not measured"

    def check(self, value: float | None, threshold: float, *, detail: str = "", subject: str | None = None) -> Check:
        """Apply the rule to one measured value.

        Args:
            value: the measurement in `unit`; None or NaN when it could not be measured.
            threshold: the bound.
            detail: appended to `what` in the reason (e.g. which slice was worst).
            subject: what was checked (a candidate's name, a version).

        Returns:
            The check; a missing value passes only when `missing_passes`.
        """
        what = f"{self.what} {detail}".strip()
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return Check(
                name=self.name, value=None, threshold=threshold, passed=self.missing_passes,
                reason=f"{what}: {self.missing_reason}", unit=self.unit, subject=subject,
            )  # fmt: skip
        value = float(value)
        passed = bool(_HOLDS[self.comparison](value, threshold))
        sign = self.comparison if passed else _FAILS[self.comparison]
        unit = f" {self.unit}" if self.unit else ""
        return Check(
            name=self.name, value=value, threshold=threshold, passed=passed,
            reason=f"{what} {value:.4g}{unit} {sign} {threshold:g}{unit}", unit=self.unit, subject=subject,
        )  # fmt: skip


def all_passed(checks: Iterable[Check]) -> bool:
    """True when every check passed (and vacuously for none: callers refuse empty rule sets)."""
    return all(c.passed for c in checks)


def failed(checks: Iterable[Check]) -> list[Check]:
    """The checks that did not pass, in order."""
    return [c for c in checks if not c.passed]


def markdown_cell(x: object) -> str:
    """One Markdown table cell: None -> "n/a", floats to 4 significant digits, `\\` and `|` escaped,
    newlines folded to spaces (a raw `|` would split the cell: "max |diff|" broke the card's table)."""
    if x is None:
        return "n/a"
    text = f"{x:.4g}" if isinstance(x, float) else str(x)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(checks: Sequence[Check], *, with_subject: bool = False) -> str:
    """A Markdown table of checks, `|` in cells escaped so reasons like "max |diff|" render.

    Returns:
        The table, header included, one row per check, no trailing newline.
    """

    cell = markdown_cell
    head = (["subject"] if with_subject else []) + ["rule", "value", "threshold", "verdict", "reason"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in checks:
        cells = ([cell(c.subject)] if with_subject else []) + [
            cell(c.name), cell(c.value), cell(c.threshold), "pass" if c.passed else "FAIL", cell(c.reason)
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
