"""``kbingest up --processors N``: what it starts and where the relay sends the processors' events."""

from __future__ import annotations

import json

from services.cli.localstack import plan_services
from shared.settings import PROCESSOR_EVENT_TYPES, Settings, subscriber_members


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]  # pydantic-settings' own kwarg


def test_one_processor_keeps_the_default_routes() -> None:
    planned = plan_services(_settings(), 1)
    assert [(p.name, p.command) for p in planned] == [
        ("api", "api"),
        ("relay", "relay"),
        ("processor", "processor"),
        ("reconciler", "reconciler"),
    ]
    assert all("KBINGEST_RELAY_ROUTES" not in p.env for p in planned)


def test_every_processor_gets_a_port_and_the_work_events_go_to_one_group_of_them() -> None:
    settings = _settings()
    planned = plan_services(settings, 3)
    workers = [p for p in planned if p.command == "processor"]
    assert [w.name for w in workers] == ["processor", "processor-2", "processor-3"]
    ports = [w.port for w in workers]
    assert ports[0] == settings.processor_port and len(set(ports)) == 3
    assert all(w.env["KBINGEST_PROCESSOR_PORT"] == str(w.port) for w in workers)
    routes = json.loads(planned[0].env["KBINGEST_RELAY_ROUTES"])
    urls = [f"http://127.0.0.1:{port}/v1/events" for port in ports]
    # One any-of subscriber, not a fan-out: a wake-up reaches one live processor, a dead one is skipped.
    assert all(routes[t] == ["|".join(urls)] for t in PROCESSOR_EVENT_TYPES)
    assert all(subscriber_members(routes[t][0]) == tuple(urls) for t in PROCESSOR_EVENT_TYPES)
    # Events no built-in service consumes stay known-and-unrouted, as with one processor.
    assert {t: v for t, v in routes.items() if t not in PROCESSOR_EVENT_TYPES} == {
        t: v for t, v in settings.effective_routes().items() if t not in PROCESSOR_EVENT_TYPES
    }
    assert len({json.dumps(p.env.get("KBINGEST_RELAY_ROUTES")) for p in planned}) == 1


def test_configured_routes_are_left_alone() -> None:
    planned = plan_services(_settings(relay_routes={"document.*": ["http://processors.internal/v1/events"]}), 2)
    assert all("KBINGEST_RELAY_ROUTES" not in p.env for p in planned)


def test_the_relay_accepts_the_planned_routes() -> None:
    planned = plan_services(_settings(), 2)
    routes = json.loads(planned[0].env["KBINGEST_RELAY_ROUTES"])
    assert _settings(relay_routes=routes).effective_routes() == routes
