"""How a queued document's place reads, shared by the UI's (format.js) and the CLI's (status.py) tests."""

from __future__ import annotations

from typing import Any

# (document fields, expected label): "next" for none ahead, no ETA part when unknown, nothing unless queued.
CASES: list[tuple[dict[str, Any], str]] = [
    ({"status": "queued", "queue_position": 37, "eta_s": 120.0}, "37 ahead · ~2 min"),
    ({"status": "queued", "queue_position": 0, "eta_s": 0.0}, "next · now"),
    ({"status": "queued", "queue_position": 0, "eta_s": 0.4}, "next · now"),
    ({"status": "queued", "queue_position": 1, "eta_s": 0.5}, "1 ahead · ~1 s"),
    ({"status": "queued", "queue_position": 3, "eta_s": 59.4}, "3 ahead · ~59 s"),
    ({"status": "queued", "queue_position": 3, "eta_s": 59.5}, "3 ahead · ~1 min"),
    ({"status": "queued", "queue_position": 12, "eta_s": 90.0}, "12 ahead · ~2 min"),
    ({"status": "queued", "queue_position": 900, "eta_s": 3569.0}, "900 ahead · ~59 min"),
    ({"status": "queued", "queue_position": 900, "eta_s": 3570.0}, "900 ahead · ~1 h"),
    ({"status": "queued", "queue_position": 9999, "eta_s": 7330.0}, "9999 ahead · ~2 h 2 min"),
    ({"status": "queued", "queue_position": 5, "eta_s": None}, "5 ahead"),
    ({"status": "queued", "queue_position": 0, "eta_s": None}, "next"),
    ({"status": "queued", "queue_position": None, "eta_s": None}, ""),
    ({"status": "processing", "queue_position": None, "eta_s": None}, ""),
    ({"status": "ready", "queue_position": 3, "eta_s": 10.0}, ""),
]
