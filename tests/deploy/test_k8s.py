"""deploy/k8s/base builds with kustomize, every resource validates against the Kubernetes schemas, and the
KEDA ScaledObject scales the worker Deployment on the right consumer group and topic, up to one worker
per partition. Uses ``kubectl kustomize`` when kubectl is installed (else puts the base together itself), and
the ``kubernetes-validate`` (schemas from PyPI) and ``pyyaml`` packages of the ``test`` extra; a test that
misses one skips and says which."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import fields

import pytest

from streams.settings import PREFIX, Settings
from streams.topics import TopicNames
from tests.conftest import REPO

BASE = REPO / "deploy" / "k8s" / "base"
KUBERNETES_VERSION = "1.37.0"


def _build_by_hand(yaml) -> list[dict]:
    """What ``kustomize build`` makes of this base (resources, namespace, labels, images), for machines
    without kubectl: enough to validate the resources, not a general kustomize."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    out = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if not doc:
                continue
            meta = doc["metadata"]
            if doc["kind"] != "Namespace":
                meta["namespace"] = kustomization["namespace"]
            meta.setdefault("labels", {}).update(labels)
            template = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in template.get("containers", []):
                container["image"] = images.get(container["image"], container["image"])
            out.append(doc)
    return out


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="pyyaml is not installed: pip install '.[test]'")
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # the same resources, put together here
        return _build_by_hand(yaml)
    built = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _build_by_hand(yaml))
    return docs


def by_kind(resources, kind) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def test_every_resource_validates_against_the_kubernetes_schemas(resources):
    validate = pytest.importorskip("kubernetes_validate",
                                   reason="kubernetes-validate is not installed: pip install '.[test]'")
    checked = 0
    for resource in resources:
        if resource["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema ships with Kubernetes; checked below
        validate.validate(resource, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 9
    assert {"attnflow-worker", "attnflow-trainer", "attnflow-serve"} <= set(by_kind(resources, "Deployment"))
    assert by_kind(resources, "ConfigMap") and by_kind(resources, "Secret")


def test_the_config_names_only_real_settings(resources):
    known = {PREFIX + f.name.upper() for f in fields(Settings)}
    names = set(by_kind(resources, "ConfigMap")["attnflow-config"]["data"])
    names |= set(by_kind(resources, "Secret")["attnflow-secrets"]["stringData"])
    for deployment in by_kind(resources, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    assert sorted(names - known) == []


def test_keda_scales_the_workers_on_their_lag_up_to_the_partition_count(resources):
    config = by_kind(resources, "ConfigMap")["attnflow-config"]["data"]
    scaled = by_kind(resources, "ScaledObject")["attnflow-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(resources, "Deployment")
    assert scaled["spec"]["maxReplicaCount"] == int(config["ATTNFLOW_PARTITIONS"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    settings = Settings.from_env({k: v for k, v in config.items() if k.startswith(PREFIX)})
    assert trigger["metadata"]["consumerGroup"] == settings.app_id
    assert trigger["metadata"]["topic"] == TopicNames.of(settings).events
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka_bootstrap
    worker = by_kind(resources, "Deployment")["attnflow-worker"]["spec"]
    assert worker["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = worker["template"]["spec"]["containers"]
    assert {"name": "ATTNFLOW_ROLE", "value": "rank"} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
