"""Stage `gate`: every rule under `gates` in params.yaml, on every candidate; pick the cheapest that passes.

Rules (a null threshold turns a rule off; an empty rule set is a params error, never a pass):
    min_roc_auc                     test ROC AUC >= threshold
    max_auc_drop_vs_parent          parent AUC - AUC <= threshold (the FP32 graph it derives from)
    max_auc_drop_vs_champion        champion AUC - AUC <= threshold (passes with a note while no champion exists)
    max_slice_auc_drop              max over scored carrier/origin/month slices of parent - candidate AUC
    max_p99_latency_ms              p99 single-row latency on this machine, one thread (ms)
    max_size_bytes                  graph file size (bytes)
    max_parity_error                export parity of the family's FP32 graph vs the native model
    max_p99_score_shift_vs_parent   p99 over test rows of |p - p_parent|: INT8 can keep AUC yet move
                                    single rows a lot (measured here), so the AUC alone is not enough
    max_batch_invariance            max |score alone - score in a batch of 1,024|

The cheapest candidate is the one with the highest rows/s at batch 1,024 (then the smallest file):
serving cost is throughput under micro-batching. The report is always written; a rejected run
then exits non-zero, so nothing downstream packages it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from driftloop.config import GatesParams, load_section
from driftloop.errors import GateRejected
from driftloop.io import read_json, write_json
from driftloop.stage import run_stage

log = logging.getLogger(__name__)


def _rule(name: str, value: float | None, threshold: float, passed: bool, reason: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(passed), "reason": reason}


def _max_rule(name: str, value: float, threshold: float, what: str, unit: str = "") -> dict:
    ok = value <= threshold
    return _rule(name, value, threshold, ok, f"{what} {value:.4g}{unit} {'<=' if ok else '>'} {threshold:g}{unit}")


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


def check_candidate(name: str, cand: dict, metrics: dict, parity: dict, champion: dict | None, gates: GatesParams) -> list[dict]:
    """Every enabled rule for one candidate, in the order of `GatesParams`' fields."""
    m = metrics[name]
    parent = metrics[cand["parent"]]
    rules = []
    if gates.min_roc_auc is not None:
        ok = m["roc_auc"] >= gates.min_roc_auc
        rules.append(_rule("min_roc_auc", m["roc_auc"], gates.min_roc_auc, ok,
                           f"ROC AUC {m['roc_auc']:.4f} {'>=' if ok else '<'} floor {gates.min_roc_auc:g}"))  # fmt: skip
    if gates.max_auc_drop_vs_parent is not None:
        rules.append(_max_rule("max_auc_drop_vs_parent", parent["roc_auc"] - m["roc_auc"], gates.max_auc_drop_vs_parent,
                               f"ROC AUC drop vs FP32 parent {cand['parent']}"))  # fmt: skip
    if gates.max_auc_drop_vs_champion is not None:
        if champion is None:
            rules.append(_rule("max_auc_drop_vs_champion", None, gates.max_auc_drop_vs_champion, True,
                               "no champion in production yet: nothing to compare with"))  # fmt: skip
        else:
            rules.append(_max_rule("max_auc_drop_vs_champion", champion["roc_auc"] - m["roc_auc"],
                                   gates.max_auc_drop_vs_champion, "ROC AUC drop vs champion"))  # fmt: skip
    if gates.max_slice_auc_drop is not None:
        drop, where = worst_slice_drop(m, parent)
        rules.append(_max_rule("max_slice_auc_drop", drop, gates.max_slice_auc_drop, f"worst slice drop vs parent ({where})"))
    if gates.max_p99_latency_ms is not None:
        rules.append(_max_rule("max_p99_latency_ms", cand["p99_ms"], gates.max_p99_latency_ms, "p99 latency at batch 1", " ms"))
    if gates.max_size_bytes is not None:
        rules.append(_max_rule("max_size_bytes", cand["size_bytes"], gates.max_size_bytes, "graph size", " B"))
    if gates.max_parity_error is not None:
        rules.append(_max_rule("max_parity_error", parity[cand["family"]]["max_abs_diff"], gates.max_parity_error,
                               f"{cand['family']} ONNX vs native max |diff|"))  # fmt: skip
    if gates.max_p99_score_shift_vs_parent is not None:
        rules.append(_max_rule("max_p99_score_shift_vs_parent", m["score_shift_vs_parent"]["p99"],
                               gates.max_p99_score_shift_vs_parent, "p99 |score - parent score|"))  # fmt: skip
    if gates.max_batch_invariance is not None:
        rules.append(_max_rule("max_batch_invariance", m["batch_invariance"], gates.max_batch_invariance,
                               "max |alone - in batch|"))  # fmt: skip
    return rules


def gate_candidates(candidates: dict, evaluation: dict, parity: dict, gates: GatesParams) -> dict:
    """Apply the rules; returns the report (`rules`, `candidates`, `chosen`, `verdict`, `champion`).

    `rules` lists the chosen candidate's rules, or, when none passes, every candidate's failed
    rules (each with a `candidate` field), so the report says why in one place.
    """
    metrics = evaluation["models"]
    champion = metrics.get("champion")
    per = {}
    for name, cand in candidates.items():
        rules = [{"candidate": name, **r} for r in check_candidate(name, cand, metrics, parity, champion, gates)]
        per[name] = {"passed": all(r["passed"] for r in rules), "rules": rules,
                     "rows_per_s": cand["rows_per_s"], "size_bytes": cand["size_bytes"]}  # fmt: skip
    passing = sorted((n for n, c in per.items() if c["passed"]), key=lambda n: (-per[n]["rows_per_s"], per[n]["size_bytes"]))
    chosen = passing[0] if passing else None
    if chosen:
        rules = per[chosen]["rules"]
    else:
        rules = [r for c in per.values() for r in c["rules"] if not r["passed"]]
    return {
        "verdict": "pass" if chosen else "reject",
        "chosen": chosen,
        "chosen_metrics": {k: metrics[chosen][k] for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")} if chosen else None,
        "rules": rules,
        "candidates": per,
        "ranking": passing,
        "champion": evaluation.get("champion"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--candidates", required=True, type=Path, help="candidates.json from optimize")
    parser.add_argument("--evaluation", required=True, type=Path)
    parser.add_argument("--parity", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)

    def body() -> None:
        gates = load_section(args.params, "gates", GatesParams)
        report = gate_candidates(
            read_json(args.candidates)["candidates"], read_json(args.evaluation), read_json(args.parity), gates
        )
        write_json(args.report, report)
        if report["verdict"] != "pass":
            raise GateRejected(
                f"no candidate passed every rule (report: {args.report}):\n  "
                + "\n  ".join(f"{r['candidate']}: {r['name']}: {r['reason']}" for r in report["rules"])
            )
        log.info("gate: pass, chosen %s (%d candidates passed)", report["chosen"], len(report["ranking"]))

    run_stage("gate", body)


if __name__ == "__main__":
    main()
