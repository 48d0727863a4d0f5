"""Stage `gate`: every rule with value, threshold, reason; the cheapest passing candidate; rejection."""

from __future__ import annotations

import copy

import pytest

from driftloop.config import GatesParams
from driftloop.gate_report import GateReport, GateReportError
from tasks.gate import GATE_RULES, gate_candidates

SLICES = {"carrier": {"UA": {"rows": 900, "roc_auc": 0.70, "flag": None}, "HA": {"rows": 3, "roc_auc": None, "flag": "under 300 rows"}},
          "origin": {"EWR": {"rows": 900, "roc_auc": 0.71, "flag": None}}}  # fmt: skip


def model(auc, shift=0.0, inv=0.0, slices=None):
    return {"roc_auc": auc, "pr_auc": 0.4, "log_loss": 0.5, "brier": 0.15, "ece": 0.02, "batch_invariance": inv,
            "slices": copy.deepcopy(slices or SLICES), "score_shift_vs_parent": {"max": shift, "p99": shift}}  # fmt: skip


def cand(parent, rows_per_s, size=1000, p99=0.05, family=None):
    return {"parent": parent, "family": family or parent, "rows_per_s": rows_per_s, "size_bytes": size, "p99_ms": p99, "how": "x"}


CANDIDATES = {"hgb_fp32": cand("hgb", 2e5), "mlp_fp32": cand("mlp", 1e6), "mlp_int8": cand("mlp", 2e6, size=500)}
EVALUATION = {"models": {"hgb": model(0.70), "mlp": model(0.70), "hgb_fp32": model(0.70), "mlp_fp32": model(0.70),
                         "mlp_int8": model(0.699, shift=0.01)}, "champion": None}  # fmt: skip
PARITY = {"hgb": {"max_abs_diff": 3e-7}, "mlp": {"max_abs_diff": 2e-7}}
RULES = dict(min_roc_auc=0.65, max_auc_drop_vs_parent=0.005, max_auc_drop_vs_champion=0.01, max_slice_auc_drop=0.03,
             max_p99_latency_ms=5.0, max_size_bytes=10**6, max_parity_error=1e-4, max_p99_score_shift_vs_parent=0.05,
             max_batch_invariance=1e-5)  # fmt: skip


def test_cheapest_passing_candidate_is_chosen_and_every_rule_reported():
    report = gate_candidates(CANDIDATES, EVALUATION, PARITY, GatesParams(**RULES))
    assert report.verdict == "pass" and report.chosen == "mlp_int8"
    assert report.ranking == ["mlp_int8", "mlp_fp32", "hgb_fp32"]
    assert [r.name for r in report.rules] == list(RULES)
    assert all(r.passed for r in report.rules)
    dumped = report.model_dump(mode="json")  # the gate.json contract
    for r in dumped["rules"]:
        assert set(r) >= {"name", "value", "threshold", "passed", "reason"}
    assert set(dumped) >= {"rules", "chosen", "verdict"}
    champion = next(r for r in report.rules if r.name == "max_auc_drop_vs_champion")
    assert champion.value is None and "no champion" in champion.reason


def test_a_failing_rule_moves_the_choice_to_the_next_cheapest():
    evaluation = copy.deepcopy(EVALUATION)
    evaluation["models"]["mlp_int8"]["batch_invariance"] = 0.02  # e.g. dynamic quantization
    report = gate_candidates(CANDIDATES, evaluation, PARITY, GatesParams(**RULES))
    assert report.chosen == "mlp_fp32"
    failed = [r for r in report.candidates["mlp_int8"].rules if not r.passed]
    assert [r.name for r in failed] == ["max_batch_invariance"] and "0.02 > 1e-05" in failed[0].reason


def test_champion_and_slice_rules_bite():
    evaluation = copy.deepcopy(EVALUATION)
    evaluation["models"]["champion"] = model(0.75)
    evaluation["models"]["mlp_int8"]["slices"]["carrier"]["UA"]["roc_auc"] = 0.60  # a 0.10 drop on UA
    report = gate_candidates(CANDIDATES, evaluation, PARITY, GatesParams(**RULES))
    assert report.verdict == "reject" and report.chosen is None
    names = {(r.candidate, r.name) for r in report.rules}
    assert ("mlp_int8", "max_slice_auc_drop") in names
    assert ("mlp_fp32", "max_auc_drop_vs_champion") in names
    slice_rule = next(r for r in report.rules if r.name == "max_slice_auc_drop")
    assert "carrier=UA" in slice_rule.reason and slice_rule.value == pytest.approx(0.10)


def test_only_enabled_rules_run():
    report = gate_candidates(CANDIDATES, EVALUATION, PARITY, GatesParams(max_size_bytes=600))
    assert report.chosen == "mlp_int8"
    assert [r.name for r in report.rules] == ["max_size_bytes"]


@pytest.mark.parametrize("rule, value", [("max_p99_latency_ms", 0.01), ("max_parity_error", 1e-9), ("min_roc_auc", 0.9)])
def test_each_budget_rejects(rule, value):
    report = gate_candidates(CANDIDATES, EVALUATION, PARITY, GatesParams(**{rule: value}))
    assert report.verdict == "reject"
    assert {r.name for r in report.rules} == {rule}


def test_the_rule_table_and_the_params_agree():
    """One row per `gates` key: a key without a row would be silently ignored, a row without a key never runs."""
    assert [row.rule.name for row in GATE_RULES] == list(GatesParams.model_fields)


def test_the_report_round_trips_through_the_typed_model(tmp_path):
    report = gate_candidates(CANDIDATES, EVALUATION, PARITY, GatesParams(**RULES))
    report.write(tmp_path / "gate.json")
    again = GateReport.read(tmp_path / "gate.json")
    assert again == report and again.passed


@pytest.mark.parametrize("text, field", [("{}", "verdict"), ('{"verdict": "maybe", "chosen": null, "rules": []}', "verdict"),
                                         ("not json", "not JSON")])  # fmt: skip
def test_a_broken_report_is_one_clear_error(tmp_path, text, field):
    (tmp_path / "gate.json").write_text(text)
    with pytest.raises(GateReportError, match=field):
        GateReport.read(tmp_path / "gate.json")


def test_cpu_cost_rule_caps_single_row_cpu_per_million():
    candidates = copy.deepcopy(CANDIDATES)
    for name, p50 in (("hgb_fp32", 0.02), ("mlp_fp32", 0.03), ("mlp_int8", 0.06)):
        candidates[name]["p50_ms"] = p50  # CPU s per million single-row predictions: 20, 30, 60
    report = gate_candidates(candidates, EVALUATION, PARITY, GatesParams(**RULES, max_cpu_s_per_million=40.0))
    assert report.chosen == "mlp_fp32"  # the fastest in batches costs too much one row at a time
    failed = [r for r in report.candidates["mlp_int8"].rules if not r.passed]
    assert [r.name for r in failed] == ["max_cpu_s_per_million"] and failed[0].value == pytest.approx(60.0)


def test_latency_rule_says_which_clock_measured_it():
    candidates = copy.deepcopy(CANDIDATES)
    for c in candidates.values():
        c["latency_clock"] = "cpu"
    candidates["hgb_fp32"]["p99_ms"] = 7.0  # over the 5 ms budget on the thread's CPU clock
    report = gate_candidates(candidates, EVALUATION, PARITY, GatesParams(**RULES))
    rule = next(r for r in report.candidates["hgb_fp32"].rules if r.name == "max_p99_latency_ms")
    assert not rule.passed and "(thread CPU time)" in rule.reason
