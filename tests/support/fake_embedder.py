"""A FAKE OpenAI-compatible embedding provider (stands in for a remote API's outages), on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIM = 384


@dataclass
class FakeEmbedder:
    base_url: str
    mode: str = "ok"  # "ok" | "down" (503) | "rate_limited" (429)
    calls: int = 0
    delay_s: float = 0.0  # a slow provider: every request takes this long


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [((digest[i % 32] + i) % 17) / 17.0 - 0.5 for i in range(DIM)]


@contextmanager
def fake_embedder() -> Iterator[FakeEmbedder]:
    state = FakeEmbedder(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            state.calls += 1
            if state.delay_s:
                time.sleep(state.delay_s)
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if state.mode != "ok":
                code = 429 if state.mode == "rate_limited" else 503
                payload = json.dumps({"error": {"message": f"fake provider {state.mode}", "type": "x"}}).encode()
                self.send_response(code)
            else:
                inputs = body.get("input") or []
                inputs = [inputs] if isinstance(inputs, str) else inputs
                data = [{"object": "embedding", "index": i, "embedding": _vector(str(t))} for i, t in enumerate(inputs)]
                payload = json.dumps(
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model"),
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    }
                ).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
