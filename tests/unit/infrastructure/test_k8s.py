"""Kubernetes manifests: kustomize render (base + production overlay), strict schemas, probes, budgets."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.connection_budget import CONNECTION_HEADROOM, peak_connections
from shared.events import EVENT_TYPES
from shared.settings import PROCESSOR_EVENT_TYPES
from tests.support import infrastructure as v

Obj = dict[str, Any]
SERVICE_PORTS = {"api": 8000, "relay": 8001, "processor": 8002, "reconciler": 8003}
REQUIRED_SECRETS = {
    "KBINGEST_DATABASE_URL",
    "KBINGEST_S3_ACCESS_KEY",
    "KBINGEST_S3_SECRET_KEY",
    "KBINGEST_API_KEY",
    "KBINGEST_RELAY_SECRET",
}
KUSTOMIZATIONS = ["base", "overlays/production"]


def _pod_specs(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(object, pod spec) of each workload among ``objects``."""
    for o in objects:
        spec = v.pod_spec(o)
        if spec is not None:
            yield o, spec


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest, infra: Path) -> list[Obj]:
    return v.render_kustomization(infra / "k8s" / request.param)


@pytest.fixture(scope="module")
def production(infra: Path) -> list[Obj]:
    return v.render_kustomization(infra / "k8s" / "overlays" / "production")


@pytest.fixture(scope="module")
def secret_example(infra: Path) -> Obj:
    (doc,) = v.load_yaml_all(infra / "k8s" / "secret.example.yaml")
    return doc


def _key(o: Obj) -> tuple[str, str, str]:
    return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(path: str, infra: Path, tool: Callable[[str], str | None]) -> None:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the renderer is checked against kustomize where it is")
    out = subprocess.run(
        [kubectl, "kustomize", str(infra / "k8s" / path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    theirs = {_key(o): o for o in yaml.safe_load_all(out) if o}
    ours = {_key(o): o for o in v.render_kustomization(infra / "k8s" / path)}
    assert ours == theirs


def test_every_object_validates_against_the_kubernetes_schema(rendered: list[Obj], secret_example: Obj) -> None:
    errors = [e for o in [*rendered, secret_example] for e in v.validate_k8s(o)]
    assert errors == []


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("imagePullPolicyy", "x")),
        ("Deployment", lambda d: d["spec"].__setitem__("replicas", "two")),
        ("Service", lambda d: d["spec"]["ports"][0].__setitem__("port", "http")),
        ("HorizontalPodAutoscaler", lambda d: d["spec"].pop("scaleTargetRef")),
        ("PodDisruptionBudget", lambda d: d["spec"].__setitem__("minAvailabe", 1)),
        ("Job", lambda d: d["spec"]["template"]["spec"].__setitem__("restartPolicy", ["Never"])),
    ],
)
def test_the_schemas_catch_mistakes(production: list[Obj], kind: str, mutate: Callable[[Obj], Any]) -> None:
    obj = copy.deepcopy(next(o for o in production if o["kind"] == kind))
    mutate(obj)
    assert v.validate_k8s(obj) != []


def test_unknown_kinds_are_errors() -> None:
    assert v.validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}) != []


def test_expected_objects(rendered: list[Obj]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    for component in SERVICE_PORTS:
        assert ("Deployment", f"kbingest-{component}") in names
        assert ("Service", f"kbingest-{component}") in names
        assert ("PodDisruptionBudget", f"kbingest-{component}") in names
    assert {("HorizontalPodAutoscaler", "kbingest-api"), ("HorizontalPodAutoscaler", "kbingest-processor")} <= names
    assert ("Job", "kbingest-migrate") in names
    assert ("ConfigMap", "kbingest-config") in names
    assert not any(kind == "Secret" for kind, _ in names), "a rendered Secret would overwrite the real one"


def test_production_overlay(production: list[Obj]) -> None:
    namespaces = v.by_kind(production, "Namespace")
    assert list(namespaces) == ["kbingest"]
    assert all(o["metadata"]["namespace"] == "kbingest" for o in production if o["kind"] != "Namespace")
    for name, dep in v.by_kind(production, "Deployment").items():
        image = v.pod_spec(dep)["containers"][0]["image"]  # type: ignore[index]
        repo, tag, _ = v._split_image(image)
        assert "/" in repo and tag and tag not in ("latest", "dev"), image
        assert repo.endswith("kbingest-processor") == (name == "kbingest-processor"), image


def test_probes_use_healthz_and_readyz_on_the_container_port(rendered: list[Obj]) -> None:
    for name, dep in v.by_kind(rendered, "Deployment").items():
        component = name.removeprefix("kbingest-")
        (container,) = v.pod_spec(dep)["containers"]  # type: ignore[index]
        assert container["ports"][0]["containerPort"] == SERVICE_PORTS[component]
        probes = {p: container[p]["httpGet"] for p in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["path"] == "/healthz", name
        assert probes["readinessProbe"]["path"] == "/readyz", name
        if "startupProbe" in container:
            assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
            probes["startupProbe"] = container["startupProbe"]["httpGet"]
        for probe, get in probes.items():
            assert v.container_port(container, get["port"]) == SERVICE_PORTS[component], (name, probe)


def test_every_workload_has_resources(rendered: list[Obj]) -> None:
    for o, spec in _pod_specs(rendered):
        for c in spec["containers"]:
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), o["metadata"]["name"]
            assert "memory" in res["limits"], o["metadata"]["name"]


def test_processor_outlives_its_drain(rendered: list[Obj]) -> None:
    spec = v.pod_spec(v.by_kind(rendered, "Deployment")["kbingest-processor"])
    assert spec is not None
    assert spec["terminationGracePeriodSeconds"] > 30  # the processor drains for up to 30 s
    assert spec["terminationGracePeriodSeconds"] == 60


def test_containers_run_the_kbingest_cli(rendered: list[Obj]) -> None:
    for o, spec in _pod_specs(rendered):
        (c,) = spec["containers"]
        expected = "migrate" if o["kind"] == "Job" else o["metadata"]["name"].removeprefix("kbingest-")
        assert "command" not in c, "keep the image's tini entrypoint; set args"
        assert c["args"] == ["kbingest", expected]


def test_pods_are_locked_down(rendered: list[Obj]) -> None:
    for _, spec in _pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_prometheus_scrape_annotations(rendered: list[Obj]) -> None:
    for name, dep in v.by_kind(rendered, "Deployment").items():
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == SERVICE_PORTS[name.removeprefix("kbingest-")]


def test_services_select_their_pods(rendered: list[Obj]) -> None:
    deployments = v.by_kind(rendered, "Deployment")
    for name, svc in v.by_kind(rendered, "Service").items():
        dep = deployments[name]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
        (container,) = v.pod_spec(dep)["containers"]  # type: ignore[index]
        for port in svc["spec"]["ports"]:
            assert v.container_port(container, port["targetPort"]) == port["port"]
    for name, pdb in v.by_kind(rendered, "PodDisruptionBudget").items():
        assert pdb["spec"]["selector"]["matchLabels"] == deployments[name]["spec"]["selector"]["matchLabels"]


def test_hpas_own_their_replicas(rendered: list[Obj]) -> None:
    deployments = v.by_kind(rendered, "Deployment")
    for hpa in v.by_kind(rendered, "HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"], "kubectl apply would fight the HPA"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # CPU utilisation targets need CPU requests
        (c,) = v.pod_spec(deployments[target["name"]])["containers"]  # type: ignore[index]
        assert "cpu" in c["resources"]["requests"]


def test_config_and_secret_wiring(rendered: list[Obj], secret_example: Obj) -> None:
    configmaps = v.by_kind(rendered, "ConfigMap")
    for _, spec in _pod_specs(rendered):
        for c in spec["containers"]:
            refs = c["envFrom"]
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= set(configmaps)
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {secret_example["metadata"]["name"]}
    assert REQUIRED_SECRETS <= set(secret_example["stringData"])
    config = configmaps["kbingest-config"]["data"]
    assert not REQUIRED_SECRETS & set(config), "secrets belong in the Secret"
    assert config["KBINGEST_BIND_HOST"] == "0.0.0.0" and config["KBINGEST_API_HOST"] == "0.0.0.0"
    assert config["KBINGEST_LOG_FORMAT"] == "json" and config["KBINGEST_ENV"] == "production"
    routes = json.loads(config["KBINGEST_RELAY_ROUTES"])
    assert set(routes) == set(EVENT_TYPES)
    assert {t for t, urls in routes.items() if urls} == set(PROCESSOR_EVENT_TYPES)
    processor = v.by_kind(rendered, "Service")["kbingest-processor"]
    url = f"http://{processor['metadata']['name']}:{processor['spec']['ports'][0]['port']}/v1/events"
    assert all(routes[t] == [url] for t in PROCESSOR_EVENT_TYPES)


def test_connection_budget_fits_postgres(rendered: list[Obj]) -> None:
    peak, max_connections = v.k8s_peak_connections(rendered), v.k8s_max_connections(rendered)
    assert peak + CONNECTION_HEADROOM <= max_connections, (peak, max_connections)


def test_production_peak_counts_every_session(production: list[Obj]) -> None:
    """The overlay's worst case by hand (docs/deploy.md §6): each replica's pool plus its dedicated sessions."""
    assert v.rollout_peak(production) == {"api": 11, "relay": 4, "processor": 13, "reconciler": 3}
    api, relay, processor, reconciler = 5 + 2 + 1, 4 + 1, 4 + 2, 1 + 1
    assert v.k8s_peak_connections(production) == 11 * api + 4 * relay + 13 * processor + 3 * reconciler


def test_connection_budget_formula() -> None:
    replicas = {"api": 2, "relay": 2, "processor": 3, "reconciler": 2}
    assert peak_connections(v.limits_from_env({}), replicas) == 2 * 8 + 2 * 6 + 3 * 7 + 2 * 2
    env = {"KBINGEST_DB_POOL_SIZE": "3", "KBINGEST_DB_MAX_OVERFLOW": "0", "KBINGEST_DB_MAX_CONNECTIONS": "4"}
    assert peak_connections(v.limits_from_env(env), replicas) == 2 * 4 + 2 * 5 + 3 * 6 + 2 * 2
    with pytest.raises(ValueError, match="no connection budget"):
        peak_connections(v.limits_from_env({}), {"indexer": 1})


def test_json_patch() -> None:
    doc = {"a": {"b": [1, 2]}, "x/y": 1}
    ops = [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "replace", "path": "/x~1y", "value": 2},
        {"op": "remove", "path": "/a/b/0"},
        {"op": "add", "path": "/c", "value": {}},
    ]
    out = v.json_patch(doc, ops)
    assert out == {"a": {"b": [2, 3]}, "x/y": 2, "c": {}}
    assert doc == {"a": {"b": [1, 2]}, "x/y": 1}
    with pytest.raises(ValueError):
        v.json_patch(doc, [{"op": "replace", "path": "/missing", "value": 1}])


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels"):
        v.render_kustomization(tmp_path)


def test_image_rules() -> None:
    rule = {"name": "kbingest", "newName": "r.example/k", "newTag": "1.2"}
    assert v._set_image("kbingest:dev", rule) == "r.example/k:1.2"
    assert v._set_image("kbingest-processor:dev", rule) == "kbingest-processor:dev"
    assert v._set_image("kbingest", {"name": "kbingest", "digest": "sha256:ab"}) == "kbingest@sha256:ab"
    assert v._split_image("localhost:5000/a/b:1@sha256:x") == ("localhost:5000/a/b", "1", "sha256:x")
