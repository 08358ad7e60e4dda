"""infra/ manifests checked offline against the schemas the tools publish (no cluster, no Docker here).

- ``infra/ray/cluster.yaml`` (``ray up``): the autoscaler's own JSON schema, shipped inside the ``ray`` package.
- ``infra/ray/raycluster.yaml`` (KubeRay): each pod template against the Kubernetes core schemas bundled by
  ``kubernetes-validate``; the RayCluster CRD's own schema is not available offline, so its required fields
  are checked here by hand. The PVC beside it is a core kind and is validated whole.
- ``infra/mlflow/docker-compose.yaml``: the Compose Specification schema vendored by ``check-jsonschema``.
Plus the project's rules: loopback-only published ports and no literal secrets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.paths import REPO_ROOT as REPO

INFRA = REPO / "infra"
K8S_VERSION = "1.36.0"
pytestmark = pytest.mark.timeout(120)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_ray_up_config_matches_the_autoscaler_schema():
    cfg = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    jsonschema.validate(cfg, _ray_schema())
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0, "the head should not train"
    gpu = [n for name, n in nodes.items() if name != cfg["head_node_type"]]
    assert gpu and all(n["resources"]["GPU"] >= 1 for n in gpu)
    # the validator really rejects a broken config (a typo'd key under a node type)
    broken = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _ray_schema())


def _validate_k8s(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kuberay_manifest_pod_templates_and_crd_fields():
    import kubernetes_validate

    docs = _docs(INFRA / "ray" / "raycluster.yaml")
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    # no offline schema for the CRD: kubernetes-validate says so rather than passing it silently
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate_k8s(rc)
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for name, group in groups:
        assert isinstance(group["rayStartParams"], dict), name
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{name}: strings only (CRD)"
        # each group's template is a core PodTemplateSpec: validate it as a PodTemplate object
        _validate_k8s({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"sctab-{name}"},
                       "template": group["template"]})
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == int(g["rayStartParams"]["num-gpus"]) >= 1
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for d in docs:
        if d["kind"] != "RayCluster":
            _validate_k8s(d)
    # the validator really rejects a broken pod template (a container without an image field of the right type)
    bad = json.loads(json.dumps(spec["headGroupSpec"]["template"]))
    bad["spec"]["containers"][0]["image"] = 42
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": bad})


def _compose_schema() -> dict:
    import check_jsonschema

    path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_file_matches_the_compose_spec():
    path = INFRA / "mlflow" / "docker-compose.yaml"
    doc = yaml.safe_load(path.read_text())
    schema = _compose_schema()
    jsonschema.validate(doc, schema)
    services = doc["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    cmd = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in cmd and "postgresql://" in services["mlflow"]["environment"][
        "MLFLOW_BACKEND_STORE_URI"] and "s3://" in cmd
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published on every interface"
    bad = json.loads(json.dumps(doc))
    bad["services"]["mlflow"]["depends_on"] = 5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


SECRET_KEYS = re.compile(r"^\s*-?\s*[A-Z_]*(PASSWORD|SECRET|ACCESS_KEY|TOKEN)[A-Z_]*\s*[:=]\s*(\S*)")


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in INFRA.rglob("*")
                                        if p.is_file()
                                        and p.suffix in (".yaml", ".yml", ".ini", ".sh", ".example", "")))
def test_no_literal_secret_in_infra(path):
    """Every secret-looking setting is empty or an environment/secret reference, never a value."""
    for line in (REPO / path).read_text().splitlines():
        m = SECRET_KEYS.search(line)
        if not m or line.lstrip().startswith("#"):
            continue
        value = m.group(2).strip("\"'")
        ok = (value.startswith("$") or value.startswith("${") or value in ("", "{secretKeyRef:")
              or "valueFrom" in line or value.startswith("{"))
        assert ok, f"{path}: literal secret? {line.strip()}"
