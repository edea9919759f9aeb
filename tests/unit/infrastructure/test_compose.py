"""infrastructure/compose.yaml: Compose Specification schema, CLI commands, start order, ports, volumes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared.connection_budget import CONNECTION_HEADROOM
from shared.events import EVENT_TYPES
from shared.settings import PROCESSOR_EVENT_TYPES
from tests.support import infrastructure as v

APP_SERVICES = {"api": "api", "relay": "relay", "processor": "processor", "reconciler": "reconciler"}
CLI_SUBCOMMANDS = {"migrate", "api", "relay", "processor", "reconciler", "doctor"}
ONE_SHOT = {"migrate", "minio-init", "doctor"}
# Services allowed to publish a port at all, and which (all on 127.0.0.1; see the header of compose.yaml).
PUBLISHED = {"api": {8000}, "grafana": {3000}, "prometheus": {9090}, "minio": {9001}}


@pytest.fixture(scope="module")
def env_example(infra: Path) -> dict[str, str]:
    return v.load_env_file(infra / ".env.example")


@pytest.fixture(scope="module")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user does before `make up`."""
    return {k: value or f"test-{k.lower()}" for k, value in env_example.items()}


@pytest.fixture(scope="module")
def raw(infra: Path) -> dict[str, Any]:
    doc: dict[str, Any] = v.load_yaml(infra / "compose.yaml")
    return doc


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = v.interpolate(raw, filled_env)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert v.validate_compose(compose) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["services"]["api"].__setitem__("restrat", "always"),
        lambda d: d["services"]["api"]["depends_on"]["migrate"].__setitem__("condition", "service_done"),
        lambda d: d["services"]["processor"]["deploy"]["resources"]["limits"].__setitem__("memry", "1g"),
        lambda d: d["volumes"].__setitem__("bad", {"driverr": "local"}),
    ],
    ids=["unknown-key", "bad-condition", "misspelt-limit", "bad-volume"],
)
def test_the_schema_catches_mistakes(compose: dict[str, Any], mutate: Any) -> None:
    doc = copy.deepcopy(compose)
    mutate(doc)
    assert v.validate_compose(doc) != []


def test_every_variable_is_in_env_example(raw: dict[str, Any], env_example: dict[str, str]) -> None:
    used: set[str] = set()
    v.interpolate(raw, {k: val or "x" for k, val in env_example.items()}, used)
    assert used - set(env_example) == set(), "variables used by compose.yaml but missing from .env.example"


def test_missing_secrets_stop_compose(raw: dict[str, Any], env_example: dict[str, str]) -> None:
    """.env.example ships empty secrets; compose must refuse to start with them rather than use defaults."""
    secrets = [k for k, val in env_example.items() if not val]
    assert {"POSTGRES_PASSWORD", "KBINGEST_S3_SECRET_KEY", "KBINGEST_API_KEY", "KBINGEST_RELAY_SECRET"} <= set(secrets)
    with pytest.raises(ValueError, match="required variable"):
        v.interpolate(raw, env_example)


def test_interpolation_rules() -> None:
    env = {"A": "a", "E": ""}
    assert v.interpolate("${A}-${B:-b}-${E:-e}-${E-x}-$$A-$A", env) == "a-b-e--$A-a"
    with pytest.raises(ValueError):
        v.interpolate("${E:?set E}", env)


def test_app_services_run_the_kbingest_cli(services: dict[str, dict[str, Any]]) -> None:
    for name, sub in {**APP_SERVICES, "migrate": "migrate", "doctor": "doctor"}.items():
        command = services[name]["command"]
        assert command[0] == "kbingest" and command[1] in CLI_SUBCOMMANDS, (name, command)
        assert command == ["kbingest", sub], name
        target = services[name]["build"]["target"]
        assert target == ("processor" if name == "processor" else "base"), name
        assert services[name]["build"]["dockerfile"] == "infrastructure/Dockerfile"


def test_app_services_wait_for_migrations_and_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert "qdrant" in deps, name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        expected = {"no"} if name in ONE_SHOT else {"unless-stopped", "always"}
        assert svc.get("restart") in expected, name


def test_processor_replicas_and_shutdown_grace(services: dict[str, dict[str, Any]]) -> None:
    processor = services["processor"]
    assert processor["deploy"]["replicas"] == 2
    assert "container_name" not in processor  # would forbid replicas
    assert _seconds(processor["stop_grace_period"]) > 30  # the processor drains for up to 30 s


def test_stateful_services(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc:")
    assert "mc mb" in "\n".join(init["command"])
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # named volumes for every piece of state
    declared = set(compose["volumes"])
    for name in ("postgres", "minio", "qdrant", "prometheus", "grafana"):
        sources = {m.split(":")[0] for m in services[name]["volumes"]}
        assert sources & declared, f"{name} keeps its data in no named volume"


def test_volume_sources_exist_or_are_declared(
    services: dict[str, dict[str, Any]], compose: dict[str, Any], infra: Path
) -> None:
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                assert (infra / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if "image" not in svc:
            assert "build" in svc, name
            continue
        _, tag, digest = v._split_image(svc["image"])
        assert (tag or digest) and tag != "latest", f"{name}: image {svc['image']} is not pinned"


def _published(port: Any) -> tuple[str | None, str]:
    if isinstance(port, dict):
        return port.get("host_ip"), str(port["target"])
    parts = str(port).split(":")
    if len(parts) == 3:
        return parts[0], parts[2]
    return None, parts[-1]


def test_no_port_is_published_on_all_interfaces(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        ports = svc.get("ports", [])
        if not ports:
            continue
        assert name in PUBLISHED, f"{name} publishes ports; databases stay inside the compose network"
        for port in ports:
            host_ip, target = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: {port} is published on every interface"
            assert int(target.split("/")[0]) in PUBLISHED[name], f"{name}: unexpected port {port}"
    for database in ("postgres", "qdrant"):
        assert not services[database].get("ports"), database


def test_containers_listen_on_all_interfaces_inside_the_network(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["KBINGEST_BIND_HOST"] == "0.0.0.0" and env["KBINGEST_API_HOST"] == "0.0.0.0"
        assert env["KBINGEST_LOG_FORMAT"] == "json" and env["KBINGEST_ENV"] == "production"
        assert env["KBINGEST_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["KBINGEST_QDRANT_URL"] == "http://qdrant:6333"
        assert env["KBINGEST_S3_ENDPOINT"] == "minio:9000"


def test_relay_routes_every_processor_event_to_the_processor(services: dict[str, dict[str, Any]]) -> None:
    routes = json.loads(services["relay"]["environment"]["KBINGEST_RELAY_ROUTES"])
    assert set(routes) == set(EVENT_TYPES)
    assert {t for t, urls in routes.items() if urls} == set(PROCESSOR_EVENT_TYPES)
    assert all(routes[t] == ["http://processor:8002/v1/events"] for t in PROCESSOR_EVENT_TYPES)
    assert (
        services["doctor"]["environment"]["KBINGEST_RELAY_ROUTES"]
        == services["relay"]["environment"]["KBINGEST_RELAY_ROUTES"]
    )


def test_healthchecks_use_each_services_port(services: dict[str, dict[str, Any]]) -> None:
    ports = {"api": "8000", "relay": "8001", "processor": "8002", "reconciler": "8003"}
    for name, port in ports.items():
        env = services[name]["environment"]
        # the image's default KBINGEST_HEALTH_PORT is 8000 (base) / 8002 (processor)
        assert env.get("KBINGEST_HEALTH_PORT", "8000" if name == "api" else None) == port, name
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_observability_is_wired(services: dict[str, dict[str, Any]], infra: Path) -> None:
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in mounts
    assert (infra / "prometheus" / "prometheus.yml").exists()
    grafana = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in grafana
    provider = v.load_yaml(infra / "grafana" / "provisioning" / "dashboards" / "kbingest.yml")
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_connection_budget_fits_postgres(services: dict[str, dict[str, Any]], filled_env: dict[str, str]) -> None:
    budget = v.compose_peak_connections(services)
    max_connections = int(filled_env["POSTGRES_MAX_CONNECTIONS"])
    assert "max_connections=" + str(max_connections) in services["postgres"]["command"]
    assert budget + CONNECTION_HEADROOM <= max_connections, (budget, max_connections)


def test_dockerignore_keeps_local_state_out_of_the_image(root: Path) -> None:
    patterns = {line.strip() for line in (root / ".dockerignore").read_text().splitlines()}
    for required in (
        ".git",
        ".venv",
        ".kbingest",
        ".env",
        "**/.env",
        "**/__pycache__",
        "tests",
        "test-artifacts",
        ".pytest_cache",
        "**/*.egg-info",
        "**/build",
    ):
        assert required in patterns, required
    for needed in (
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "alembic",
        "shared",
        "services",
        "requirements",
        "packaging",
    ):
        assert needed not in patterns, f"{needed} is needed by the Dockerfile"
