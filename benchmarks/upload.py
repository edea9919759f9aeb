"""Upload latency and throughput through a real API process (100 KB and 5 MB, concurrency 1/10/50)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
import uuid

import httpx

from benchmarks.support import api_process, embedded_stack, summarize_ms, table

SIZES = {"100 KB": 100 * 1024, "5 MB": 5 * 1024 * 1024}
CONCURRENCY = (1, 10, 50)


async def _run_case(base: str, key: str, size: int, concurrency: int, total: int) -> tuple[list[float], float, int]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as client:
        kb = (await client.post("/v1/knowledge-bases", json={"name": f"bench-{uuid.uuid4().hex[:8]}"})).json()["id"]
        payloads = [base64.b64encode(os.urandom(size * 3 // 4)) for _ in range(min(total, 8))]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        latencies: list[float] = []
        errors = 0

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = payloads[i % len(payloads)][:-32] + uuid.uuid4().hex.encode()
                started = time.perf_counter()
                response = await client.post(
                    f"/v1/knowledge-bases/{kb}/documents", files={"file": (f"f{i}.bin.txt", body, "text/plain")}
                )
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 201

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, errors


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer uploads per case")
    args = parser.parse_args(argv)
    rows = []
    key = "kbi_bench_" + uuid.uuid4().hex
    with embedded_stack() as stack, api_process(stack, key, KBINGEST_MAX_UPLOAD_BYTES=str(64 * 1024 * 1024)) as base:
        for label, size in SIZES.items():
            for concurrency in CONCURRENCY:
                per_case = (20 if size > 1024 * 1024 else 100) if args.quick else (60 if size > 1024 * 1024 else 400)
                total = max(per_case, concurrency * 2)
                latencies, elapsed, errors = asyncio.run(_run_case(base, key, size, concurrency, total))
                stats = summarize_ms(latencies)
                rows.append(
                    [
                        label,
                        concurrency,
                        total,
                        stats["p50"],
                        stats["p95"],
                        stats["p99"],
                        total / elapsed,
                        total * size / elapsed / 1024 / 1024,
                        errors,
                    ]
                )
    out = table(["file", "concurrency", "uploads", "p50 ms", "p95 ms", "p99 ms", "uploads/s", "MB/s", "errors"], rows)
    print("## Upload (API process → Postgres + nanio, one machine)\n\n" + out + "\n")
    return out


if __name__ == "__main__":
    main()
