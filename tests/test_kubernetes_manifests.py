"""The Kubernetes manifests of deploy/kubernetes/, validated offline.

`kubectl apply --dry-run=client` needs a reachable API server even to validate (it downloads the
OpenAPI document first), so the schemas come from `kubernetes-validate`, which ships the
Kubernetes JSON schemas: every document is checked in strict mode (an unknown field is an error)
against Kubernetes 1.32. The Prefect work pool's base job template is rendered with its variables'
defaults and its Job checked the same way. Then what the schemas cannot know: the probes hit the
server's real health routes, the container args are options of `driftloop serve`, the autoscaler
targets the Deployment on a metric the server exports (not CPU).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(FOLDER.glob("*.yaml")):
        docs += [(f"{path.name}:{d['kind']}/{d['metadata']['name']}", d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name,doc", documents(), ids=[n for n, _ in documents()])
def test_every_manifest_is_valid_kubernetes(name, doc):
    validate(doc)


def test_an_unknown_field_fails_validation():
    import kubernetes_validate

    deployment = next(d for _, d in documents() if d["metadata"]["name"] == "driftloop-server" and d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGets"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def render(template: object, values: dict) -> object:
    """Prefect's templating, for whole-value placeholders: "{{ x }}" -> values[x], "{{ x }}-" -> str."""
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if isinstance(template, str):
        whole = re.fullmatch(r"\{\{ (\w+) \}\}", template)
        if whole:
            return values[whole.group(1)]
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), template)
    return template


def test_work_pool_base_job_template_renders_a_valid_job():
    template = json.loads((FOLDER / "base-job-template.json").read_text())
    declared = template["variables"]["properties"]
    used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
    assert used <= set(declared), f"undeclared variables: {used - set(declared)}"
    values = {name: spec.get("default") for name, spec in declared.items()}
    # The worker passes env as a list of {name, value} and the flow run's command as args.
    values["env"] = [{"name": "PREFECT_API_URL", "value": "http://prefect-server:4200/api"}]
    values["command"] = ["python", "-m", "prefect.engine"]
    job = render(template["job_configuration"]["job_manifest"], values)
    validate(job)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    worker = next(d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-worker")
    assert "kubernetes" in worker["spec"]["template"]["spec"]["containers"][0]["command"]


def test_server_probes_args_and_autoscaling_match_the_server():
    import typer.main

    from commands.main import app
    from serving.app import create_app
    from serving.config import ServeSettings
    from serving.metrics import ServerMetrics

    server = next(d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "driftloop-server")
    container = server["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"] for p in container["ports"]}
    routes = set(create_app(ServeSettings(repository=ROOT / "no-such-repo")).openapi()["paths"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes and container[probe]["httpGet"]["port"] in ports
    serve = typer.main.get_command(app).commands["serve"]
    options = {o for p in serve.params for o in p.opts}
    assert all(a in options for a in container["args"] if a.startswith("--"))
    hpa = next(d for _, d in documents() if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "driftloop-server"}
    exported = {m.name for m in ServerMetrics().registry.collect()}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] != "Resource"  # not CPU or memory: what users feel
        assert metric["pods"]["metric"]["name"] in exported
