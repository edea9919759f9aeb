"""Dead letters are listed and replayed through the API and the CLI; unroutable events are parked, not lost."""

from __future__ import annotations

import subprocess
import sys

import httpx

from services.relay.build import open_relay
from shared.settings import Settings
from tests.support.pipeline_helpers import service_env
from tests.support.relay_helpers import SubscriberProcess, fill, metrics, query, relay_settings
from tests.support.servers import ROOT


async def _dead_letter(settings: Settings, subscriber: SubscriberProcess, count: int = 1) -> list[str]:
    await fill(settings.database_url, count=count, aggregates=count)
    await subscriber.control(status=400, count=count)
    async with open_relay(settings, metrics()) as relay:
        await relay.run_once()
    return [str(r["id"]) for r in await query(settings.database_url, "SELECT id FROM outbox ORDER BY seq")]


async def _delivered(settings: Settings, event_id: str) -> bool:
    rows = await query(settings.database_url, "SELECT delivered_at FROM outbox WHERE id = $1::uuid", event_id)
    return rows[0]["delivered_at"] is not None


async def test_api_lists_and_replays_dead_letters(
    api: httpx.AsyncClient, relay_config: Settings, subscriber: SubscriberProcess
) -> None:
    ids = await _dead_letter(relay_config, subscriber, count=3)
    page = (await api.get("/v1/outbox/dead", params={"limit": 2})).json()
    assert [item["id"] for item in page["items"]] == ids[:2]
    item = page["items"][0]
    assert (item["type"], item["dead_reason"], item["attempts"]) == ("document.uploaded", "rejected", 1)
    assert item["last_error"].startswith("HTTP 400") and item["errors"][0]["status"] == 400
    assert item["subject"] and item["dead_at"]
    rest = (await api.get("/v1/outbox/dead", params={"cursor": page["next_cursor"]})).json()
    assert [i["id"] for i in rest["items"]] == ids[2:] and rest["next_cursor"] is None
    assert (await api.get("/v1/outbox/dead", params={"cursor": "nope"})).status_code == 422

    replayed = await api.post(f"/v1/outbox/{ids[0]}/replay")
    assert replayed.status_code == 202 and replayed.json() == {"id": ids[0], "status": "pending"}
    again = await api.post(f"/v1/outbox/{ids[0]}/replay")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_dead"
    missing = await api.post("/v1/outbox/00000000-0000-4000-8000-000000000000/replay")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    async with open_relay(relay_config, metrics()) as relay:
        await relay.run_once()
    assert await _delivered(relay_config, ids[0])
    assert [i["id"] for i in (await api.get("/v1/outbox/dead")).json()["items"]] == ids[1:]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "outbox", *args],
        env=service_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_lists_and_replays_dead_letters(relay_config: Settings, subscriber: SubscriberProcess) -> None:
    (event_id,) = await _dead_letter(relay_config, subscriber)
    listed = _cli(relay_config, "dead")
    assert listed.returncode == 0, listed.stderr
    assert event_id in listed.stdout and "reason=rejected" in listed.stdout and "HTTP 400" in listed.stdout
    replayed = _cli(relay_config, "replay", event_id)
    assert replayed.returncode == 0 and f"replayed {event_id}" in replayed.stdout
    again = _cli(relay_config, "replay", event_id)
    assert again.returncode == 1 and "not dead-lettered" in again.stderr
    async with open_relay(relay_config, metrics()) as relay:
        await relay.run_once()
    assert await _delivered(relay_config, event_id)
    assert "no dead letters" in _cli(relay_config, "dead").stdout


async def test_unroutable_events_are_parked_counted_and_replayable(
    database_url: str, subscriber: SubscriberProcess
) -> None:
    narrow = relay_settings(database_url, {"document.uploaded": [subscriber.url], "document.indexed": []})
    await fill(database_url, count=2, aggregates=2, event_type="document.failed")
    await fill(database_url, count=1, aggregates=1, event_type="document.indexed")
    m = metrics()
    async with open_relay(narrow, m) as relay:
        await relay.run_once()
    rows = await query(database_url, "SELECT type, dead_reason, delivered_at, last_error FROM outbox ORDER BY seq")
    assert [r["dead_reason"] for r in rows] == ["unroutable", "unroutable", None]
    assert "no route for event type 'document.failed'" in rows[0]["last_error"]
    assert rows[2]["delivered_at"] is not None, "an empty route is 'nobody needs it': settled without a request"
    assert m.unroutable._value.get() == 2 and m.dead_letters._value.get() == 2
    assert await subscriber.deliveries() == []

    widened = relay_settings(database_url, {"document.*": [subscriber.url]})
    for row in await query(database_url, "SELECT id FROM outbox WHERE dead_reason = 'unroutable'"):
        assert _cli(widened, "replay", str(row["id"])).returncode == 0
    async with open_relay(widened, m) as relay:
        await relay.run_once()
    assert len(await subscriber.deliveries()) == 2
    assert m.unroutable._value.get() == 0
