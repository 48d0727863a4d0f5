"""Stage `package`: the chosen candidate becomes an immutable model package in `artifacts/model/`.

Refuses to package without a passing gate verdict (the TFX "blessing" pattern). On a rejection it
replaces `artifacts/model/` by a rejection card (`REJECTED`, `model_card.json`, `model_card.md`,
no model) and exits non-zero: a rejected run leaves nothing that looks releasable (the previous
package is gone, `verify_package` and so `register` refuse the folder), and since this stage then
has no lock entry, `dvc status` reports it as not built.

Files (see `driftloop.package` for the contract): `model.onnx`, `signature.json`,
`model_card.json`, `model_card.md`, `reference.parquet` (a time-uniform sample of `reference_rows`
rows of the whole window, every split at the same fraction: the raw columns, `label`, the time column,
`split` and the package's own `score`; see driftloop/drift.py; the card's `reference` holds its
held-out rows' ROC AUC and DeLong SE, the drift check's honest reference), `SHA256SUMS`. The lineage id is the first 16 hex
of sha256(model sha256, data sha256s, params): the same inputs give the same id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.checks import Check, markdown_cell, markdown_table
from driftloop.config import CostParams, PackageParams, load_section, read_params_file
from driftloop.dataset import Dataset
from driftloop.drift import build_reference, reference_stats
from driftloop.environment import lockfile_sha256
from driftloop.errors import GateRejected
from driftloop.gate_report import GateReport
from driftloop.io import atomic_path, read_json, sha256_file
from driftloop.onnx_graph import graph_feeds, run_graph
from driftloop.package import REJECTED, write_sha256sums
from driftloop.schema import LABEL, Signature, output_specs
from driftloop.stage import run_stage

log = logging.getLogger(__name__)

LIBRARIES = ("driftloop", "scikit-learn", "torch", "onnx", "onnxruntime", "skl2onnx", "onnxscript",
             "pandas", "numpy", "great_expectations", "dvc")  # fmt: skip


def library_versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def lineage_id(model_sha: str, data_sha: dict, params: dict) -> str:
    blob = json.dumps({"model": model_sha, "data": data_sha, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


REPRODUCIBILITY = {
    "bit_identical_on_one_machine": (
        "the snapshot, the features, the fitted models (models/native: seeds fixed, MLP training on one thread "
        "with torch's deterministic algorithms) and the tree graph; measured in two fresh clones"
    ),
    "not_bit_identical": (
        "measured speed (p50/p99 latency, rows/s) and so the gate's latency rule and its choice among passing "
        "candidates; the MLP's ONNX bytes (torch's dynamo export differs between processes with identical "
        "weights) and so its INT8 and pruned graphs; across machines, float kernels chosen by "
        "CPU instruction set (torch, ONNX Runtime) can change the last bits of training"
    ),
    "how_a_rebuild_is_judged": (
        "`driftloop rebuild VERSION`: lineage inputs equal, then every file's sha256 equal, else the registered "
        "candidate's rebuilt graph scores the reference sample within 1e-6"
    ),
}
"""What the card states about rebuilding this package (issue 12), measured on one 2-core machine."""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


IMPORTANCE_ROWS = 5000
"""Held-out rows the permutation importance scores (seeded sample; cost: rows x columns x repeats graph rows)."""


def permutation_importance(model: bytes, test: pd.DataFrame, dataset: Dataset, *, rows: int = IMPORTANCE_ROWS, repeats: int = 3,
                           seed: int = 0) -> dict:  # fmt: skip
    """Global feature importance of the packaged graph: ROC AUC lost when one input column is shuffled.

    Breiman (2001, "Random forests", Machine Learning 45) and scikit-learn's `permutation_importance`:
    each input column's values are permuted across the rows (seeded), the graph rescored, and the drop
    of ROC AUC from the unshuffled rows recorded; `repeats` permutations per column give a mean and a
    standard deviation. On held-out rows (the test split), so it measures what the model uses, not
    what it memorised.

    Args:
        model: the ONNX graph's bytes (raw input columns in, probability out).
        test: labelled held-out rows: the input columns and `LABEL` (rows without a label are dropped).
        dataset: the declaration: the graph's inputs and their dtypes.
        rows: at most this many rows (seeded sample).
        repeats: permutations per column.
        seed: sampling and permutation seed.

    Returns:
        {"metric": "roc_auc", "split": "test", "rows", "repeats", "baseline": ROC AUC,
         "columns": {column: {"mean", "std"}}} in the graph's input order; a mean near 0 = unused.
    """
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    names = [s.name for s in dataset.input_specs()]
    labelled = test[test[LABEL].notna()]
    sample = labelled.sample(n=min(rows, len(labelled)), random_state=seed).reset_index(drop=True)
    y = sample[LABEL].astype(int).to_numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def auc(frame: pd.DataFrame) -> float:
        feeds = dataset.to_onnx_feeds(frame)
        return float(roc_auc_score(y, session.run(None, {n: feeds[n] for n in names})[0].reshape(-1)))

    baseline = auc(sample)
    rng = np.random.default_rng(seed)
    columns = {}
    for name in names:
        drops = []
        for _ in range(repeats):
            shuffled = sample.copy()
            shuffled[name] = rng.permutation(sample[name].to_numpy())
            drops.append(baseline - auc(shuffled))
        columns[name] = {"mean": float(np.mean(drops)), "std": float(np.std(drops))}
    return {"metric": "roc_auc", "split": "test", "rows": len(sample), "repeats": repeats, "baseline": baseline,
            "columns": columns}  # fmt: skip


def write_importance_plot(importance: dict, path: Path) -> None:
    """`reports/importance.csv` for `dvc plots` (a horizontal bar per column, largest first)."""
    from driftloop.io import write_text

    ordered = sorted(importance["columns"].items(), key=lambda kv: -kv[1]["mean"])
    write_text(path, "column,importance,std\n" + "".join(f"{c},{v['mean']:.6f},{v['std']:.6f}\n" for c, v in ordered))


def prediction_cost(speed: dict, cost: CostParams) -> dict:
    """CPU seconds and money per million predictions, from the gate stage's benchmark of the graph.

    The benchmark runs ONNX Runtime on one thread (tasks/gate.py `measure_speed`), where wall time is CPU time
    when the core is not shared (else wall time overstates it): a single-row request costs its p50
    latency, a row in a full micro-batch 1 / rows_per_s. Inference only: HTTP, parsing and encoding
    are the server's and measured there (`driftloop_cpu_seconds_per_1k_predictions`, serving/metrics.py).

    Args:
        speed: `p50_ms` (batch 1, ms) and `rows_per_s` (at `optimize.throughput_batch`).
        cost: the price of a CPU core-hour.

    Returns:
        {"cpu_hour", "currency", "cpu_s_per_million": {"batch_1", "batched"}, "per_million": {"batch_1", "batched"}}.
    """
    cpu_s = {"batch_1": speed["p50_ms"] * 1000.0, "batched": 1e6 / speed["rows_per_s"]}
    return {
        "cpu_hour": cost.cpu_hour,
        "currency": cost.currency,
        "cpu_s_per_million": cpu_s,
        "per_million": {k: v / 3600.0 * cost.cpu_hour for k, v in cpu_s.items()},
        "source": "gate stage benchmark, one ONNX Runtime thread (inference only)",
    }


def render_card_md(card: dict) -> str:
    """The model card for people (Mitchell et al. 2019, "Model Cards for Model Reporting", abridged)."""
    m = card["metrics"]
    lines = [
        f"# Model card: {card['model_name']} ({card['lineage_id']})",
        "",
        f"Predicts P({card['label']['rule']}) for one row of `{card['dataset']['main_table']}` ({card['dataset']['name']}),"
        f" from the {len(card['signature']['inputs'])} inputs below.",
        "",
        "## Lineage",
        f"- candidate: `{card['candidate']}` ({card['how']})",
        f"- built: {card['built_at']}; git commit: the one the registry's version tag points at (`gto show`,"
        " `driftloop rebuild VERSION`; the tag message names this lineage id). Its dvc.lock records this"
        " package's hash, so the package cannot name it, and HEAD at build time is another commit",
        f"- environment: `{card['environment']['lockfile']}` sha256 `{card['environment']['lockfile_sha256']}`",
        f"- data: {card['data']['source']}, window {card['data']['window']['start']}..{card['data']['window']['end']},"
        f" {card['data']['rows'][card['dataset']['main_table']]} rows of {card['dataset']['main_table']}",
        *[f"- data sha256: {name} `{sha}`" for name, sha in card["data"]["sha256"].items()],
        "",
        "## Test metrics (last days of the window, never seen in training)",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {m[k]:.4f} |" for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")],
        "",
        "## ROC AUC per slice (test split; small slices flagged, not scored)",
        "| slice | rows | ROC AUC |",
        "|---|---|---|",
        *[f"| {markdown_cell(f'{col}={value}')} | {st['rows']} | "
          f"{_fmt(st['roc_auc']) if st['roc_auc'] is not None else markdown_cell(st['flag'])} |"
          for col in card["slices"] for value, st in sorted(card["slices"][col].items())],
        *_cost_lines(card.get("cost")),
        *_importance_lines(card.get("importance")),
        "",
        f"## Gate: {card['gate']['verdict']}",
        markdown_table([Check.model_validate(r) for r in card["gate"]["rules"]]),
        "",
        "## Reproducibility",
        *[f"- {k.replace('_', ' ')}: {v}" for k, v in card["reproducibility"].items()],
        "",
        "## Inputs",
        "| name | datatype | nullable |",
        "|---|---|---|",
        *[f"| {markdown_cell(s['name'])} | {markdown_cell(s['datatype'])} | {s['nullable']} |"
          for s in card["signature"]["inputs"]],
        "",
        "## Libraries",
        *[f"- {k}: {v}" for k, v in card["libraries"].items()],
        "",
    ]
    return "\n".join(lines)


def build_package(
    out: Path, *, model_path: Path, candidate: str, candidates: dict, gate: GateReport, evaluation: dict,
    manifest: dict, params: dict, pkg: PackageParams, dataset: Dataset, splits: dict[str, pd.DataFrame], repo_root: Path,
) -> str:  # fmt: skip
    """Write the package folder atomically; returns its lineage id.

    The signature's inputs are `dataset.input_specs()` (the features in input order); the reference
    sample holds them, `label`, the time column (`dataset.time.column`), `split` and `score`.

    Raises:
        GateRejected: the gate verdict is not "pass" or chose another candidate.
    """
    if not gate.passed or gate.chosen != candidate:
        raise GateRejected(f"gate verdict is {gate.verdict!r}: refusing to package; fix the candidates or the rules")
    model_sha = sha256_file(model_path)
    lid = lineage_id(model_sha, manifest["sha256"], params)
    signature = Signature(model_name=pkg.model_name, lineage_id=lid, inputs=dataset.input_specs(), outputs=output_specs())
    time = dataset.time.column
    reference = build_reference(splits, pkg.reference_rows, seed=0, features=dataset.feature_names, time_column=time)
    model = model_path.read_bytes()
    reference["score"] = run_graph(model, graph_feeds(model, reference)).astype(np.float32)
    card = {
        "model_name": pkg.model_name,
        "lineage_id": lid,
        "candidate": candidate,
        "how": candidates[candidate]["how"],
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # No commit here: the registry tags the commit whose dvc.lock records this package's hash,
        # which the package cannot contain; HEAD at build time would be a different commit.
        "git": {"commit": None, "commit_from": "registry: the commit the version tag points at (gto show)"},
        "environment": lockfile_sha256(repo_root),
        "reproducibility": REPRODUCIBILITY,
        "data": manifest,
        "params": params,
        "libraries": library_versions(),
        "dataset": {"name": dataset.name, "main_table": dataset.main_table, "time_column": time},
        "label": {"name": LABEL, "rule": dataset.label.rule},
        "metrics": gate.chosen_metrics,
        "slices": evaluation["models"][candidate]["slices"],  # ROC AUC per value of each dataset.slices column
        "batch_invariance": evaluation["models"][candidate]["batch_invariance"],
        "champion": evaluation.get("champion"),
        "speed": {k: candidates[candidate][k] for k in ("p50_ms", "p99_ms", "rows_per_s", "size_bytes")},
        "cost": prediction_cost(candidates[candidate], CostParams.model_validate(params.get("cost") or {})),
        "importance": permutation_importance(model_path.read_bytes(), splits["test"], dataset),
        "gate": gate.model_dump(mode="json", include={"verdict", "chosen", "rules"}),
        "signature": signature.model_dump(),
        "model_sha256": model_sha,
        "reference": reference_stats(reference, time).model_dump(),  # held-out ROC AUC of the drift check
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "model.onnx").write_bytes(model_path.read_bytes())
        (tmp / "signature.json").write_text(signature.model_dump_json(indent=2) + "\n")
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / "model_card.md").write_text(render_card_md(card))
        reference.to_parquet(tmp / "reference.parquet", index=False)
        write_sha256sums(tmp)
    return lid


def write_rejection(out: Path, gate: GateReport, gate_path: Path) -> None:
    """Replace `out` by a rejection card: `REJECTED`, `model_card.json` (verdict, failed rules), `model_card.md`.

    No model and no `SHA256SUMS`: `driftloop.package.verify_package` refuses the folder, so neither
    `register` nor the server can take it for a package.
    """
    card = {"gate": gate.model_dump(mode="json", include={"verdict", "chosen", "rules"}),
            "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    lines = ["# REJECTED: no candidate passed the gate", "",
             f"Nothing here is releasable. The gate report is `{gate_path}`; the failed rules:", "",
             *[f"- {line}" for line in gate.failed_lines()], ""]  # fmt: skip
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / REJECTED).write_text("the gate rejected every candidate; see model_card.md\n")
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        (tmp / "model_card.md").write_text("\n".join(lines))


def _importance_lines(imp: dict | None) -> list[str]:
    if not imp:
        return []
    ordered = sorted(imp["columns"].items(), key=lambda kv: -kv[1]["mean"])
    return [
        "",
        f"## Global feature importance (permutation, {imp['rows']} held-out {imp['split']} rows, {imp['repeats']} repeats)",
        f"ROC AUC lost when the column is shuffled (baseline {imp['baseline']:.4f}); plot: `dvc plots show"
        " reports/importance.csv`.",
        "",
        "| column | ROC AUC drop | std |",
        "|---|---|---|",
        *[f"| {c} | {v['mean']:.4f} | {v['std']:.4f} |" for c, v in ordered],
    ]


def _cost_lines(cost: dict | None) -> list[str]:
    if not cost:
        return []
    c, cur = cost["cpu_s_per_million"], cost["currency"]
    money = cost["per_million"]
    return [
        "",
        f"## Cost per million predictions (at {cost['cpu_hour']:g} {cur} per CPU-hour: params `cost.cpu_hour`)",
        "| requests | CPU seconds | cost |",
        "|---|---|---|",
        f"| one row each (p50 at batch 1) | {c['batch_1']:,.1f} | {money['batch_1']:.4f} {cur} |",
        f"| full micro-batches | {c['batched']:,.1f} | {money['batched']:.4f} {cur} |",
        "",
        f"Measured by the {cost['source']}; the server measures its whole cost per version on `/metrics`"
        " (`driftloop_cpu_seconds_per_1k_predictions`).",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--gate", required=True, type=Path)
    parser.add_argument("--candidates", required=True, type=Path, help="folder written by optimize")
    parser.add_argument("--evaluation", required=True, type=Path)
    parser.add_argument("--snapshot", required=True, type=Path, help="snapshot folder (its manifest)")
    parser.add_argument("--features", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--importance", type=Path, help="CSV of the card's permutation importance, for `dvc plots`")
    args = parser.parse_args(argv)

    def body() -> None:
        pkg = load_section(args.params, "package", PackageParams)
        gate = GateReport.read(args.gate)
        if not gate.passed or gate.chosen is None:
            write_rejection(args.out, gate, args.gate)
            raise GateRejected(
                f"no candidate passed every rule (report: {args.gate}); {args.out} holds the rejection card, "
                "nothing releasable:\n  " + "\n  ".join(gate.failed_lines())
            )
        chosen = gate.chosen
        candidates = read_json(args.candidates / "candidates.json")["candidates"]
        timed = gate.candidates[chosen]  # the gate stage timed every candidate (optimize does not)
        candidates[chosen] |= {"p50_ms": timed.p50_ms, "p99_ms": timed.p99_ms, "rows_per_s": timed.rows_per_s}
        lid = build_package(
            args.out, model_path=args.candidates / candidates[chosen]["file"], candidate=chosen, candidates=candidates,
            gate=gate, evaluation=read_json(args.evaluation), manifest=read_json(args.snapshot / "manifest.json"),
            params=read_params_file(args.params), pkg=pkg, dataset=load_section(args.params, "dataset", Dataset),
            splits={n: pd.read_parquet(args.features / f"{n}.parquet") for n in ("train", "valid", "test")},
            repo_root=Path.cwd(),
        )  # fmt: skip
        if args.importance is not None:
            card = json.loads((args.out / "model_card.json").read_text())
            write_importance_plot(card["importance"], args.importance)
        log.info("package: %s (%s) -> %s", chosen, lid, args.out)

    run_stage("package", body)


if __name__ == "__main__":
    main()
