"""Bench part: N jobs, each with a webhook, against a local receiver that verifies every signature.

Run alone from the repository root: `.venv/bin/python bench/webhooks.py --jobs 1000`.

The service runs as `python app.py` (offline writer) with WEBHOOK_ALLOW_PRIVATE=1, the
receiver as uvicorn in a process of its own on loopback; `--fail-every K` makes the receiver
answer 500 to every K-th request, so retries show. Printed: deliveries (distinct webhook-ids
taken), duplicates (the same webhook-id taken more than once), retries (failed attempts, from
/metrics), signature failures, and the p50/p95/max from each job's end (`finished_at`) to its
`job.completed` delivery (wall clock, one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import secrets
import sys
import time
from datetime import datetime
from typing import Any

import httpx
from _measure import wait_for
from _server import free_port, metric, percentile, run_server

SUBMIT_CONCURRENCY = 50
TIMEOUT_S = 600.0


def receive(port: int, secret: str, fail_every: int, log: Any) -> None:
    """The receiver: verify, record (webhook-id, type, job id, arrival), answer."""
    import uvicorn
    from standardwebhooks import Webhook
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    verifier = Webhook(secret)
    count = 0

    async def hook(request: Request) -> Response:
        nonlocal count
        body = await request.body()
        count += 1
        try:
            payload = verifier.verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - counted, and answered like a forged request
            log.put(("forged", "", "", time.time()))
            return Response(status_code=400)
        if fail_every and count % fail_every == 0:
            return Response(status_code=500)
        log.put((request.headers["webhook-id"], payload["type"], payload["data"]["id"],
                 time.time()))
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def receiver_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


async def submit_all(url: str, hook: str, jobs: int) -> list[str]:
    ids: list[str] = []
    places = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(n: int) -> None:
            async with places:
                while True:
                    response = await client.post("/api/jobs", json={
                        "topic": f"Topic {n}", "webhook": hook})
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(0.2)  # the queue is full: wait for room
                response.raise_for_status()
                ids.append(response.json()["id"])
        await asyncio.gather(*(one(n) for n in range(jobs)))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--fail-every", type=int, default=0,
                        help="the receiver answers 500 to every K-th request (0: never)")
    parser.add_argument("--delay-ms", type=int, default=20, help="OFFLINE_LLM_DELAY_MS")
    args = parser.parse_args()

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    port = free_port()
    log: Any = multiprocessing.get_context("fork").Queue()
    receiver = multiprocessing.get_context("fork").Process(
        target=receive, args=(port, secret, args.fail_every, log), daemon=True)
    receiver.start()
    try:
        if wait_for(lambda: receiver_up(port), 15.0, 0.05) is None:
            sys.exit("the receiver did not start")
        with run_server(WEBHOOK_SECRET=secret, WEBHOOK_ALLOW_PRIVATE="1",
                        WEBHOOK_BACKOFF_SECONDS="0.5", OFFLINE_LLM_DELAY_MS=str(args.delay_ms),
                        MAX_QUEUED_JOBS=str(max(1000, args.jobs))) as server:
            started = time.monotonic()
            ids = asyncio.run(submit_all(server.url, f"http://127.0.0.1:{port}/hook", args.jobs))
            taken: dict[str, list[tuple[str, str, float]]] = {}
            forged = 0
            while len(taken) < len(ids) and time.monotonic() - started < TIMEOUT_S:
                try:
                    webhook_id, kind, job_id, at = log.get(timeout=1.0)
                except Exception:  # noqa: BLE001 - queue.Empty: look again until the timeout
                    continue
                if webhook_id == "forged":
                    forged += 1
                    continue
                taken.setdefault(webhook_id, []).append((kind, job_id, at))
            # The last late duplicates, if any, come within a moment.
            time.sleep(1.0)
            while not log.empty():
                webhook_id, kind, job_id, at = log.get()
                if webhook_id != "forged":
                    taken.setdefault(webhook_id, []).append((kind, job_id, at))
            wall_s = time.monotonic() - started
            finished: dict[str, float] = {}
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for job_id in ids:
                    job = client.get(f"/api/jobs/{job_id}").json()
                    if job["finished_at"]:
                        finished[job_id] = datetime.fromisoformat(
                            job["finished_at"].replace("Z", "+00:00")).timestamp()
            retries = metric(server.url, 'articlestream_webhook_attempts_total{outcome="failed"}')
            failed = metric(server.url, 'articlestream_webhook_deliveries_total{outcome="failed"}')
    finally:
        receiver.terminate()
        receiver.join(timeout=10)

    lags = sorted(max(0.0, arrivals[0][2] - finished[arrivals[0][1]])
                  for arrivals in taken.values() if arrivals[0][1] in finished)
    duplicates = sum(len(arrivals) - 1 for arrivals in taken.values())
    print(json.dumps({
        "jobs": len(ids), "deliveries": len(taken), "duplicates": duplicates,
        "retries": int(retries), "failed_for_good": int(failed), "forged": forged,
        "job_end_to_delivery_ms": {
            "p50": round(percentile(lags, 0.50) * 1000, 1) if lags else None,
            "p95": round(percentile(lags, 0.95) * 1000, 1) if lags else None,
            "max": round(lags[-1] * 1000, 1) if lags else None},
        "wall_s": round(wall_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
