"""deploy/prometheus/alerts.yml: valid for promtool, each alert unit-tested at its edge, every metric it reads
exported by the server or the drift check, and an injected fault firing its alert on a real Prometheus that
scrapes a real server on loopback.

Needs `prometheus` and `promtool` (Debian package `prometheus`, installed by .ci/run): skipped with the reason
when absent outside CI, a failure under CI=true.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import onnx
import pytest
import yaml
from onnx import helper

from driftloop.checks import Check
from driftloop.config import PolicyParams
from driftloop.package import write_sha256sums
from flows.policy import Decision, DriftSummary
from serving.app import create_app
from serving.config import ServeSettings
from serving.metrics import ServerMetrics
from serving.testing import build_test_package, records_payload, running_server, synthetic_rows
from tests.conftest import ROOT, wait_for

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")
RUNBOOK = ROOT / "docs" / "runbook.md"
MODEL = "flight_delay"
ANNOTATIONS = ("summary", "description", "rollback", "runbook")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs the Debian package `prometheus`")
        pytest.skip(f"{name} is not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _rules_copy(folder: Path, *, annotations: bool, for_zero: bool = False) -> Path:
    """A copy of alerts.yml in `folder`: without annotations (promtool compares them verbatim) and/or every `for` 0s."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if not annotations:
                rule.pop("annotations", None)
            if for_zero:
                rule["for"] = "0s"
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_promtool_check_rules():
    out = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_promtool_unit_tests(tmp_path):
    """Each alert fires on its case and stays quiet just past its edge (tests/observe/alerts_test.yml)."""
    _rules_copy(tmp_path, annotations=False)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    out = subprocess.run([_tool("promtool"), "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == {r["alert"] for r in _rules()}, "every alert needs a promtool unit test"


def test_every_alert_says_when_to_roll_back_and_has_a_runbook_section():
    runbook = RUNBOOK.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", runbook, flags=re.M)}
    for rule in _rules():
        missing = [k for k in ANNOTATIONS if not rule.get("annotations", {}).get(k)]
        assert not missing, f"{rule['alert']}: annotations {missing} missing"
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"
        assert rule["alert"].lower() in headings, f"docs/runbook.md has no '## {rule['alert']}' section"
        section = runbook.split(f"## {rule['alert']}", 1)[1].split("\n## ", 1)[0]
        assert "driftloop rollback" in section, f"runbook section {rule['alert']} must say when to run it"


def _drift_textfile(folder: Path, *, share: float, auc_bound: float) -> Path:
    """The drift check's real writer, with a summary whose drift share and AUC-drop bound are given."""
    from flows.monitoring import write_drift_metrics

    policy = PolicyParams()
    checks = [
        Check(name="drift_share", value=share, threshold=policy.drift_share, passed=share < policy.drift_share,
              reason="share"),
        Check(name="auc_drop", value=auc_bound, threshold=policy.max_auc_drop,
              passed=auc_bound <= policy.max_auc_drop, reason="auc"),
    ]  # fmt: skip
    summary = DriftSummary(status="checked", model_version="1", rows=5000, checks=checks)
    decision = Decision(retrain=True, drift=True, verdict="drift", reasons=["share"])
    return write_drift_metrics(folder, MODEL, summary, decision, policy, dt.datetime.now(dt.UTC))


def _exported_names(tmp_path: Path) -> set[str]:
    """Every metric name the server's /metrics and the drift check's textfile can hold."""
    from prometheus_client.parser import text_string_to_metric_families

    folder = tmp_path / "textfiles"
    _drift_textfile(folder, share=0.5, auc_bound=0.5)
    metrics = ServerMetrics(folder)
    metrics.inference.labels("m", "1").observe(0.001)  # a labelled family shows samples only once used
    metrics.batch_rows.labels("m", "1").observe(1)
    metrics.score.labels("m", "1").observe(0.5)
    metrics.requests.labels("/x", "200").inc()
    metrics.latency.labels("/x").observe(0.001)
    metrics.traffic.labels("m", "1").set(100)
    metrics.loaded_versions.labels("m").set(1)
    payload, _ = metrics.exposition()
    return {s.name for f in text_string_to_metric_families(payload.decode()) for s in f.samples}


def test_every_metric_an_alert_reads_is_exported(tmp_path):
    exported = _exported_names(tmp_path) | {"up"}
    for rule in _rules():
        names = set(re.findall(r"\bdriftloop_[a-z0-9_]+", rule["expr"])) | set(re.findall(r"\bup(?=\{)", rule["expr"]))
        assert names, rule["alert"]
        unknown = sorted(names - exported)
        assert not unknown, f"{rule['alert']} reads {unknown}, which nothing exports"


# ----------------------------------------------------------------------------- live Prometheus


def build_odd_batch_failure(folder: Path) -> Path:
    """A test package whose graph passes the 64-row warm-up and fails on every odd-sized batch.

    The score goes through Reshape to [2, -1] and back to [-1, 1]: a no-op for an even row count, an
    ONNX Runtime error for an odd one (a single-row request is a 500): the fault a release can ship.
    """
    build_test_package(folder, model_name=MODEL, version_weight=1.5, lineage_id="test-odd-batch-failure")
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    out = graph.output[0].name
    last = next(n for n in graph.node if out in n.output)
    last.output[0] = "p_raw"
    graph.initializer.extend([
        helper.make_tensor("pair_shape", onnx.TensorProto.INT64, [2], [2, -1]),
        helper.make_tensor("col_shape", onnx.TensorProto.INT64, [2], [-1, 1]),
    ])  # fmt: skip
    graph.node.extend([
        helper.make_node("Reshape", ["p_raw", "pair_shape"], ["p_pair"]),
        helper.make_node("Reshape", ["p_pair", "col_shape"], [out]),
    ])  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    write_sha256sums(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus on loopback (its own TSDB in a temp folder), 1 s scrapes and rule evaluations."""

    def __init__(self, folder: Path, target: str, rules: Path) -> None:
        self.port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "driftloop", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [_tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        self.wait(lambda: self._ready(), "Prometheus did not become ready", 30)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}"
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    @staticmethod
    def wait(condition, message: str, timeout_s: float = 60):
        return wait_for(condition, timeout_s, message, interval_s=0.2)

    def query(self, expr: str) -> list[dict]:
        body = self.client.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def firing(self) -> dict[str, list[dict]]:
        alerts = self.client.get("/api/v1/alerts").json()["data"]["alerts"]
        out: dict[str, list[dict]] = {}
        for a in alerts:
            if a["state"] == "firing":
                out.setdefault(a["labels"]["alertname"], []).append(a)
        return out

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_injected_fault_fires_its_alert_on_a_real_prometheus(tmp_path):
    """A canary whose graph fails on single rows -> DriftloopHighErrorRate fires; the drift check's
    textfile, re-exposed on /metrics, fires DriftloopDriftShareHigh and not DriftloopRocAucDrop."""
    _tool("promtool")
    repo = tmp_path / "repo"
    build_test_package(repo / MODEL / "1", model_name=MODEL, version_weight=1.0)
    textfiles = tmp_path / "drift-metrics"
    _drift_textfile(textfiles, share=0.25, auc_bound=0.001)
    rules = _rules_copy(tmp_path, annotations=True, for_zero=True)
    settings = ServeSettings(repository=repo, models=[MODEL], metrics_textfile_dir=textfiles, max_batch_size=1)
    body = records_payload(synthetic_rows(1, seed=3))
    statuses: list[int] = []
    stop = threading.Event()
    with running_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as server:

        def traffic() -> None:  # steady single-row requests, so every scrape sees the counters grow
            with httpx.Client(base_url=base, timeout=30) as client:
                i = 0
                while not stop.is_set():
                    r = client.post(f"/v1/models/{MODEL}:predict", json=body, headers={"x-request-id": f"r-{i}"})
                    statuses.append(r.status_code)
                    i += 1
                    stop.wait(0.02)

        sender = threading.Thread(target=traffic, name="test-traffic")
        prom = Prometheus(tmp_path, base.removeprefix("http://"), rules)
        sender.start()
        try:
            scoring = 'endpoint=~"/v2/models/.+/infer|/v1/models/.+:predict"'
            # healthy traffic on stable, seen by Prometheus: no 5xx series at all, and the alert does not fire
            prom.wait(lambda: prom.query(f'sum(rate(driftloop_requests_total{{{scoring},status="200"}}[5m])) > 0'),
                      "Prometheus never saw the healthy traffic")  # fmt: skip
            assert prom.query(f'driftloop_requests_total{{{scoring},status=~"5.."}}') == []
            assert "DriftloopHighErrorRate" not in prom.firing()
            # the drift check's gauges arrive through the server's /metrics and fire the drift alert only
            drift = prom.wait(lambda: prom.firing().get("DriftloopDriftShareHigh"), "DriftloopDriftShareHigh never fired")
            assert drift[0]["labels"]["model"] == MODEL and drift[0]["labels"]["version"] == "1"
            assert "DriftloopRocAucDrop" not in prom.firing()
            assert set(statuses) == {200}, set(statuses)

            # the fault: a release installs version 2 and loads it (it passes warm-up) as a 50% canary
            build_odd_batch_failure(repo / MODEL / "2")
            assert server.post(f"/v2/repository/models/{MODEL}/load",
                               json={"parameters": {"version": "2"}}).status_code == 200  # fmt: skip
            assert server.post(f"/v2/repository/models/{MODEL}/traffic",
                               json={"weights": {"1": 50, "2": 50}}).status_code == 200  # fmt: skip
            fired = prom.wait(lambda: prom.firing().get("DriftloopHighErrorRate"), "DriftloopHighErrorRate never fired")
            assert fired[0]["labels"]["instance"] == base.removeprefix("http://")
            assert "driftloop rollback" in fired[0]["annotations"]["rollback"]
            assert {200, 500} <= set(statuses)
            # the runbook's first look: two versions take traffic, so a canary is open
            split = {r["metric"]["version"]: float(r["value"][1]) for r in prom.query(
                f'driftloop_traffic_percent{{model="{MODEL}"}} > 0')}  # fmt: skip
            assert split == {"1": 50.0, "2": 50.0}
        finally:
            stop.set()
            sender.join(30)
            prom.close()
