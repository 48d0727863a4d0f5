"""Stage `gate`: every rule under `gates` in params.yaml, on every candidate; pick the cheapest that passes.

The rules are one table, `GATE_RULES`: a `driftloop.checks.Rule` (name = the `gates` key holding
the threshold, what is measured, comparison, unit) and the function that measures it on one
candidate. One loop applies every row whose threshold is set; adding a rule is one row here and
one optional key in `GatesParams`. A null threshold turns a rule off; an empty rule set is a
params error, never a pass.

    min_roc_auc                     test ROC AUC >= threshold
    max_auc_drop_vs_parent          parent AUC - AUC <= threshold (the FP32 graph it derives from)
    max_auc_drop_vs_champion        champion AUC - AUC <= threshold (passes with a note while no champion exists)
    max_slice_auc_drop              max over scored `dataset.slices` slices of parent - candidate AUC
    max_p99_latency_ms              p99 single-row latency on this machine, one thread (ms; wall time, or
                                    the thread's CPU time with optimize.latency_clock: cpu)
    max_size_bytes                  graph file size (bytes)
    max_parity_error                export parity of the family's FP32 graph vs the native model
    max_p99_score_shift_vs_parent   p99 over test rows of |p - p_parent|: INT8 can keep AUC yet move
                                    single rows a lot (measured here), so the AUC alone is not enough
    max_batch_invariance            max |score alone - score in a batch of 1,024|

The cheapest candidate is the one with the highest rows/s at batch 1,024 (then the smallest file):
serving cost is throughput under micro-batching. Speed is measured here, not by `optimize`
(`measure_speed`: every candidate side by side in this process, one ONNX Runtime thread, on test
rows), so the candidates' hashes in dvc.lock never depend on the machine; the figures land in
this report (a metrics file, `candidates.<name>.p50_ms / p99_ms / rows_per_s`) and differ run to run. The report is always written and the stage
exits 0 either way: a rejection is a recorded outcome (DVC caches it like any other), and the
`package` stage that follows turns it into a rejected package and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.bench import make_session, measure
from driftloop.checks import Rule
from driftloop.config import GatesParams, OptimizeParams, load_section
from driftloop.gate_report import HEADLINE_METRICS, CandidateVerdict, GateCheck, GateReport
from driftloop.io import read_json
from driftloop.onnx_graph import graph_feeds
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """What a rule measures one candidate on: its optimize entry, its metrics, its parent's, the champion's."""

    name: str
    candidate: dict  # candidates.json entry (family, parent, size_bytes) + measure_speed's p50_ms, p99_ms, rows_per_s
    metrics: dict  # evaluation.json models[name]
    parent: dict  # evaluation.json models[parent]
    champion: dict | None  # evaluation.json models["champion"], when one was scored
    parity: dict  # parity.json: family -> {max_abs_diff, ...}


Measure = Callable[[Subject], tuple[float | None, str]]  # (value in the rule's unit, detail for the reason)


@dataclass(frozen=True)
class GateRule:
    """One row of the table: the rule as data and how to measure it."""

    rule: Rule
    measure: Measure


def worst_slice_drop(candidate: dict, parent: dict) -> tuple[float, str]:
    """Largest parent-minus-candidate ROC AUC over slices scored in both; (drop, "column=value")."""
    worst, where = float("-inf"), "no scored slice"
    for column, values in candidate["slices"].items():
        for value, stats in values.items():
            base = parent["slices"][column].get(value, {}).get("roc_auc")
            if stats["roc_auc"] is None or base is None:
                continue
            drop = base - stats["roc_auc"]
            if drop > worst:
                worst, where = drop, f"{column}={value}"
    return (worst if worst != float("-inf") else 0.0), where


def _slice_drop(s: Subject) -> tuple[float, str]:
    drop, where = worst_slice_drop(s.metrics, s.parent)
    return drop, f"({where})"


NO_CHAMPION = "no champion in production yet: nothing to compare with"

# name (= the `gates` key), what, comparison, unit; then how to measure it. Order = report order.
GATE_RULES: tuple[GateRule, ...] = (
    GateRule(Rule(name="min_roc_auc", what="ROC AUC", comparison=">="),
             lambda s: (s.metrics["roc_auc"], "")),
    GateRule(Rule(name="max_auc_drop_vs_parent", what="ROC AUC drop vs FP32 parent", comparison="<="),
             lambda s: (s.parent["roc_auc"] - s.metrics["roc_auc"], s.candidate["parent"])),
    GateRule(Rule(name="max_auc_drop_vs_champion", what="ROC AUC drop vs champion", comparison="<=",
                  missing_passes=True, missing_reason=NO_CHAMPION),
             lambda s: (None if s.champion is None else s.champion["roc_auc"] - s.metrics["roc_auc"], "")),
    GateRule(Rule(name="max_slice_auc_drop", what="worst slice ROC AUC drop vs parent", comparison="<="),
             _slice_drop),
    GateRule(Rule(name="max_p99_latency_ms", what="p99 latency at batch 1", comparison="<=", unit="ms"),
             lambda s: (s.candidate["p99_ms"], "(thread CPU time)" if s.candidate.get("latency_clock") == "cpu" else "")),
    GateRule(Rule(name="max_size_bytes", what="graph size", comparison="<=", unit="B"),
             lambda s: (s.candidate["size_bytes"], "")),
    GateRule(Rule(name="max_parity_error", what="ONNX vs native max |diff|", comparison="<="),
             lambda s: (s.parity[s.candidate["family"]]["max_abs_diff"], f"({s.candidate['family']})")),
    GateRule(Rule(name="max_p99_score_shift_vs_parent", what="p99 |score - parent score|", comparison="<="),
             lambda s: (s.metrics["score_shift_vs_parent"]["p99"], "")),
    GateRule(Rule(name="max_batch_invariance", what="max |alone - in batch|", comparison="<="),
             lambda s: (s.metrics["batch_invariance"], "")),
    GateRule(Rule(name="max_cpu_s_per_million", what="CPU per million single-row predictions", comparison="<=",
                  unit="s"),
             lambda s: (s.candidate["p50_ms"] * 1000.0, "(p50 at batch 1, one thread)")),
)  # fmt: skip


def check_candidate(subject: Subject, gates: GatesParams, table: tuple[GateRule, ...] = GATE_RULES) -> list[GateCheck]:
    """Every enabled rule of `table` for one candidate, in table order."""
    out = []
    for row in table:
        threshold = getattr(gates, row.rule.name)
        if threshold is None:
            continue
        value, detail = row.measure(subject)
        check = row.rule.check(value, threshold, detail=detail, subject=subject.name)
        out.append(GateCheck(**check.model_dump(exclude={"subject"}), candidate=subject.name))
    return out


def gate_candidates(candidates: dict, evaluation: dict, parity: dict, gates: GatesParams) -> GateReport:
    """Apply the rules to every candidate and choose the cheapest that passes.

    Args:
        candidates: `measure_speed`'s table (name -> family, parent, size_bytes, p50_ms, p99_ms, rows_per_s).
        evaluation: evaluation.json (`models`: name -> metrics; `champion`).
        parity: parity.json (family -> max_abs_diff).

    Returns:
        The report; `rules` lists the chosen candidate's checks, or, when none passes, every
        candidate's failed checks, so the report says why in one place.
    """
    metrics = evaluation["models"]
    champion = metrics.get("champion")
    per = {}
    for name, cand in candidates.items():
        subject = Subject(name, cand, metrics[name], metrics[cand["parent"]], champion, parity)
        rules = check_candidate(subject, gates)
        per[name] = CandidateVerdict(passed=all(r.passed for r in rules), rules=rules, rows_per_s=cand["rows_per_s"],
                                     size_bytes=cand["size_bytes"], p50_ms=cand.get("p50_ms"), p99_ms=cand.get("p99_ms"))  # fmt: skip
    passing = sorted((n for n, c in per.items() if c.passed), key=lambda n: (-per[n].rows_per_s, per[n].size_bytes))
    chosen = passing[0] if passing else None
    rules = per[chosen].rules if chosen else [r for c in per.values() for r in c.rules if not r.passed]
    return GateReport(
        verdict="pass" if chosen else "reject",
        chosen=chosen,
        chosen_metrics={k: metrics[chosen][k] for k in HEADLINE_METRICS} if chosen else None,
        rules=rules,
        candidates=per,
        ranking=passing,
        champion=evaluation.get("champion"),
    )


def measure_speed(folder: Path, table: dict[str, dict], test: pd.DataFrame, params: OptimizeParams) -> dict[str, dict]:
    """`table` (candidates.json's) with each candidate's speed added, measured side by side here.

    Adds `p50_ms`, `p99_ms` (batch 1, ms, on `params.latency_clock`: wall, or the thread's CPU
    time), `latency_clock` and `rows_per_s` (batch `params.throughput_batch`), one ONNX Runtime
    thread (`driftloop.bench.measure`), on `test`'s rows fed to `<folder>/<file>`.
    """
    out = {}
    for name, cand in table.items():
        blob = (folder / cand["file"]).read_bytes()
        speed = measure(
            make_session(blob, threads=1), graph_feeds(blob, test), latency_runs=params.latency_runs,
            batch=params.throughput_batch, batch_runs=params.throughput_runs, clock=params.latency_clock,
        )  # fmt: skip
        out[name] = cand | speed | {"latency_clock": params.latency_clock}
        log.info("gate: %-17s p50 %.3f ms  p99 %.3f ms  %9.0f rows/s", name, speed["p50_ms"], speed["p99_ms"],
                 speed["rows_per_s"])  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--candidates", required=True, type=Path, help="folder from optimize (graphs + candidates.json)")
    parser.add_argument("--features", required=True, type=Path, help="features folder: speed is timed on test rows")
    parser.add_argument("--evaluation", required=True, type=Path)
    parser.add_argument("--parity", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        gates = load_section(args.params, "gates", GatesParams)
        table = measure_speed(
            args.candidates, read_json(args.candidates / "candidates.json")["candidates"],
            pd.read_parquet(args.features / "test.parquet"), load_section(args.params, "optimize", OptimizeParams),
        )  # fmt: skip
        report = gate_candidates(table, read_json(args.evaluation), read_json(args.parity), gates)
        report.write(args.report)
        if report.passed:
            log.info("gate: pass, chosen %s (%d candidates passed)", report.chosen, len(report.ranking))
        else:
            log.warning("gate: reject, no candidate passed every rule (report: %s):\n  %s", args.report,
                        "\n  ".join(report.failed_lines()))  # fmt: skip

    run_stage("gate", body)


if __name__ == "__main__":
    main()
