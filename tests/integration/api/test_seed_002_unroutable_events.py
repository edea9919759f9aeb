"""Seed 002: a batch was submitted to a queue no worker listened to; 10 minutes of silence, then a timeout.

Here: a real ``kbingest relay`` whose routes lack ``document.uploaded``. The events are parked (not dropped),
``unroutable_events`` shows in GET /v1/pipeline within 60 s, and the fix (add the route, replay) clears it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.support import servers
from tests.support.api_helpers import create_kb, upload
from tests.support.pipeline_helpers import alert_codes, http_sink, service_env, start_cli, stop_process, wait_http_ok
from tests.support.poll import eventually


async def test_seed_002_event_without_route_is_parked_and_reported(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    sink_port, relay_port = servers.free_port(), servers.free_port()
    sink = f"http://127.0.0.1:{sink_port}/v1/events"
    log = tmp_path / "relay.log"

    def relay(routes: dict[str, list[str]]) -> object:
        env = service_env(
            settings,
            KBINGEST_RELAY_PORT=str(relay_port),
            KBINGEST_RELAY_ROUTES=json.dumps(routes),
            KBINGEST_RELAY_BACKOFF_BASE_S="0.2",
        )
        proc = start_cli(["relay"], env, log)
        wait_http_ok(f"http://127.0.0.1:{relay_port}/readyz", proc, log)
        return proc

    async with http_sink(sink_port) as received:
        # Misconfigured: only requeues are routed; uploads go to "a queue nobody listens to".
        proc = relay({"document.requeued": [sink], "document.stage_changed": []})
        try:
            kb = await create_kb(api)
            for i in range(3):
                assert (await upload(api, kb, f"f{i}.md", f"# {i}\n".encode())).status_code == 201

            async def raised() -> set[str] | None:
                codes = await alert_codes(api)
                return codes if "unroutable_events" in codes else None

            codes = await eventually(raised, timeout_s=60)
            assert "dead_letters" in codes
            body = (await api.get("/v1/pipeline")).json()
            assert body["outbox"]["unroutable"] == 3
            alert = next(a for a in body["alerts"] if a["code"] == "unroutable_events")
            assert "KBINGEST_RELAY_ROUTES" in alert["message"] and alert["since"]
            assert received == []
        finally:
            stop_process(proc)

        # The fix: add the route, then replay what was parked.
        proc = relay({"document.*": [sink]})
        try:
            dead = (await api.get("/v1/outbox/dead", params={"reason": "unroutable"})).json()["items"]
            assert len(dead) == 3
            for item in dead:
                assert (await api.post(f"/v1/outbox/{item['id']}/replay")).status_code == 202

            async def delivered() -> list[dict[str, object]] | None:
                uploaded = [e for e in received if e["type"] == "document.uploaded"]
                return uploaded if len(uploaded) == 3 else None

            await eventually(delivered, timeout_s=60)
            body = (await api.get("/v1/pipeline")).json()
            assert not {a["code"] for a in body["alerts"]} & {"unroutable_events", "dead_letters"}
            assert body["outbox"]["unroutable"] == body["outbox"]["dead"] == 0
        finally:
            stop_process(proc)
