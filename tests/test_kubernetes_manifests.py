"""The Kubernetes manifests of deploy/kubernetes/, validated offline.

`kubectl apply --dry-run=client` needs a reachable API server even to validate (it downloads the
OpenAPI document first), so the schemas come from `kubernetes-validate`, which ships the
Kubernetes JSON schemas: every document is checked in strict mode (an unknown field is an error)
against Kubernetes 1.32. The Prefect work pool's base job template is rendered with its variables'
defaults and its Job checked the same way. Then what the schemas cannot know: the probes hit the
server's real health routes, the container args are options of `driftloop serve`, the autoscaler
targets the Deployment on a metric the server exports (not CPU). KServe's `InferenceService` is a
custom resource with no core schema: its fields are checked against KServe's Python SDK models.
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


CRDS = {"serving.kserve.io/v1beta1": "kserve"}
"""Custom resources, checked against their SDK's models (`sdk_check`) instead of the core schemas."""


@pytest.mark.parametrize("name,doc", [d for d in documents() if d[1]["apiVersion"] not in CRDS],
                         ids=[n for n, d in documents() if d["apiVersion"] not in CRDS])  # fmt: skip
def test_every_manifest_is_valid_kubernetes(name, doc):
    validate(doc)


def sdk_check(value: object, type_name: str, where: str = "") -> list[str]:
    """Errors of `value` against an OpenAPI-generated SDK model (kserve's, kubernetes.client's):
    every key must be one of the model's fields (strict), recursively; primitives by type."""
    import kserve
    import kubernetes.client

    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    if type_name.lower().startswith("list["):  # list[X] and List[X], both spellings occur
        return [e for i, v in enumerate(value) for e in sdk_check(v, type_name[5:-1], f"{where}[{i}]")]
    if type_name.lower().startswith(("dict(", "dict[")):  # dict(str, X) and Dict[str, X]
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return [e for k, v in value.items() for e in sdk_check(v, inner, f"{where}.{k}")]
    model = getattr(kserve, type_name, None) or getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{where}.{k}: not a field of {type_name}" for k in value if k not in fields]
    for k, v in value.items():
        if k in fields:
            errors += sdk_check(v, model.openapi_types[fields[k]], f"{where}.{k}")
    return errors


def test_inference_service_fields_exist_in_kserves_sdk():
    isvc = next(d for _, d in documents() if d["kind"] == "InferenceService")
    assert sdk_check(isvc, "V1beta1InferenceService") == []
    broken = json.loads(json.dumps(isvc))
    broken["spec"]["predictor"]["minReplica"] = 2
    assert sdk_check(broken, "V1beta1InferenceService") == [".spec.predictor.minReplica: not a field of V1beta1PredictorSpec"]
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


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
