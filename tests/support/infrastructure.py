"""Offline checks for the deployment files in infrastructure/ (used by tests/unit/infrastructure).

Only the standard library, PyYAML, jsonschema and ``shared.connection_budget``. The JSON schemas are vendored under
infrastructure/schemas/ (see schemas/README.md for where each comes from).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

from shared.connection_budget import SERVICES, EnvLimits, connection_budget, limits_from_env, peak_connections

ROOT = Path(__file__).resolve().parents[2] / "infrastructure"
SCHEMAS = ROOT / "schemas"
K8S_VERSION = "v1.33.0"

Obj = dict[str, Any]

# --------------------------------------------------------------------------- YAML / env files


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, optional quotes), as docker compose reads an env file."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


# --------------------------------------------------------------------------- compose

_VAR = re.compile(r"\$(?:(?P<dollar>\$)|(?P<plain>[_a-zA-Z][_a-zA-Z0-9]*)|\{(?P<braced>[^}]*)\})")
_BRACED = re.compile(r"^(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


def interpolate(value: Any, env: Mapping[str, str], used: set[str] | None = None) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` over every string value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["dollar"]:
            return "$"
        spec = m["plain"] or m["braced"]
        parsed = _BRACED.match(spec)
        if parsed is None:
            raise ValueError(f"invalid interpolation: {m[0]!r}")
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"] or ""
        if used is not None:
            used.add(name)
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VAR.sub(one, value)


@cache
def _compose_schema() -> Obj:
    schema: Obj = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return schema


def validate_compose(doc: Obj) -> list[str]:
    """Errors of ``doc`` (an interpolated compose file) against the Compose Specification schema."""
    validator = jsonschema.Draft202012Validator(_compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


# --------------------------------------------------------------------------- kustomize (the subset we use)

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass", "PriorityClass"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _set_image(image: str, rule: Mapping[str, str]) -> str:
    name, tag, digest = _split_image(image)
    if name != rule["name"]:
        return image
    name = rule.get("newName", name)
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def pod_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") not in WORKLOADS:
        return None
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc: Obj, ops: Iterable[Mapping[str, Any]]) -> Obj:
    """RFC 6902 ``add`` / ``replace`` / ``remove`` (what our overlays use); returns a patched copy."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        kind = op["op"]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if kind == "add":
                target.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                target[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del target[index]
            else:
                raise ValueError(f"unsupported patch op {kind!r}")
        else:
            if kind in ("replace", "remove") and last not in target:
                raise ValueError(f"patch {kind} of missing path {op['path']!r}")
            if kind in ("add", "replace"):
                target[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del target[last]
            else:
                raise ValueError(f"unsupported patch op {kind!r}")
    return doc


def _matches(obj: Obj, target: Mapping[str, str]) -> bool:
    return all((obj.get(k) if k == "kind" else obj["metadata"].get(k)) == v for k, v in target.items())


def render_kustomization(directory: Path) -> list[Obj]:
    """Render a kustomization the way ``kubectl kustomize`` does, for the fields in KUSTOMIZATION_KEYS only.

    Anything else raises, so a new kustomize feature can't be silently ignored by the tests.
    """
    kust: Obj = load_yaml(directory / "kustomization.yaml")
    unknown = set(kust) - KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not support: {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in kust.get("resources", []):
        path = directory / entry
        objects += render_kustomization(path) if path.is_dir() else load_yaml_all(path)
    for patch in kust.get("patches", []):
        ops = yaml.safe_load(patch["patch"]) if "patch" in patch else load_yaml(directory / patch["path"])
        if not isinstance(ops, list):
            raise ValueError(f"{directory}: only JSON 6902 patches are supported, got {type(ops).__name__}")
        indexes = [i for i, o in enumerate(objects) if _matches(o, patch["target"])]
        if not indexes:
            raise ValueError(f"{directory}: patch target matches nothing: {patch['target']}")
        for i in indexes:
            objects[i] = json_patch(objects[i], ops)
    for rule in kust.get("replicas", []):
        scaled = [o for o in objects if o["kind"] in WORKLOADS - {"Job"} and o["metadata"]["name"] == rule["name"]]
        if not scaled:
            raise ValueError(f"{directory}: replicas rule matches nothing: {rule['name']}")
        for o in scaled:
            o["spec"]["replicas"] = int(rule["count"])
    for rule in kust.get("images", []):
        for o in objects:
            spec = pod_spec(o)
            for c in (spec or {}).get("containers", []) + (spec or {}).get("initContainers", []):
                c["image"] = _set_image(c["image"], rule)
    if "namespace" in kust:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = kust["namespace"]
    return objects


# --------------------------------------------------------------------------- Kubernetes schemas


def _schema_file(obj: Obj) -> Path:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    return SCHEMAS / f"k8s-{K8S_VERSION}" / f"{obj['kind'].lower()}-{group_version}.json"


@cache
def _k8s_registry() -> Registry[Any]:
    resources = []
    for path in sorted((SCHEMAS / f"k8s-{K8S_VERSION}").glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


def validate_k8s(obj: Obj) -> list[str]:
    """Errors of one object against the strict schema of its kind (an unknown kind is an error too)."""
    path = _schema_file(obj)
    if not path.exists():
        return [f"no vendored schema for {obj.get('apiVersion')} {obj.get('kind')} ({path.name})"]
    schema = json.loads(path.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=_k8s_registry())
    name = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
    return [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def container_port(container: Obj, port: int | str) -> int | None:
    """Resolve a probe's port (number or named containerPort) to a number declared by the container."""
    for p in container.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    return None


# --------------------------------------------------------------------------- Prometheus / metrics

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
PROMETHEUS_BUILTINS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_metric_names(path: Path) -> dict[str, str]:
    """Metric name → type from metrics.txt: one name per line; a ``# type: X`` comment sets the type below it."""
    names: dict[str, str] = {}
    kind = "untyped"
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            m = re.match(r"#\s*type:\s*(\w+)", line)
            kind = m[1] if m else kind
            continue
        name = line.split("#", 1)[0].strip()
        if name:
            names[name] = kind
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, label matchers, ranges and grouping labels removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{[^}]*\}|\$\w+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    found = re.findall(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()", text)
    return {name for name in found if name.lower() not in PROMQL_WORDS}


def unknown_metrics(names: Iterable[str], known: Mapping[str, str]) -> set[str]:
    """Names neither listed in metrics.txt nor built into Prometheus (histograms may use their series suffixes)."""
    missing = set()
    for name in names:
        if name in known or name in PROMETHEUS_BUILTINS:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is not None and known.get(base) == "histogram":
            continue
        missing.add(name)
    return missing


def grafana_exprs(dashboard: Obj) -> list[str]:
    exprs: list[str] = []
    for panel in dashboard.get("panels", []):
        exprs += [t["expr"] for t in panel.get("targets", []) if "expr" in t]
        exprs += grafana_exprs(panel)  # rows nest panels
    return exprs


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# --------------------------------------------------------------------------- Postgres connection budget


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def rollout_peak(objects: list[Obj]) -> dict[str, int]:
    """Replicas per component at the HPA maximum (or its replicas), plus its surge pods during a rolling update."""
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(objects, "HorizontalPodAutoscaler").values()}
    peak = {}
    for name, dep in by_kind(objects, "Deployment").items():
        replicas = hpas[name]["spec"]["maxReplicas"] if name in hpas else dep["spec"].get("replicas", 1)
        surge = dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        if not isinstance(surge, int):
            raise ValueError(f"{name}: use an absolute maxSurge so the budget is computable, not {surge!r}")
        peak[name.removeprefix("kbingest-")] = replicas + surge
    return peak


def k8s_max_connections(objects: list[Obj]) -> int:
    config = by_kind(objects, "ConfigMap")["kbingest-config"]
    return int(config["metadata"]["annotations"]["kbingest.io/postgres-max-connections"])


def k8s_limits(objects: list[Obj]) -> EnvLimits:
    return limits_from_env(by_kind(objects, "ConfigMap")["kbingest-config"]["data"])


def k8s_peak_connections(objects: list[Obj]) -> int:
    """The rendered kustomization's worst case: every replica at its peak, each at its connection ceiling."""
    return peak_connections(k8s_limits(objects), rollout_peak(objects))


def compose_replicas(services: Mapping[str, Obj]) -> dict[str, int]:
    return {name: services[name].get("deploy", {}).get("replicas", 1) for name in SERVICES}


def compose_peak_connections(services: Mapping[str, Obj]) -> int:
    """The compose file's worst case; each service's own environment sets its ceilings."""
    return sum(
        connection_budget(limits_from_env(services[name]["environment"]))[name].total * count
        for name, count in compose_replicas(services).items()
    )
