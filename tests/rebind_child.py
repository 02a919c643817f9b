"""The child of tests/test_webhook_rebinding.py: runs only inside a network namespace of its own.

`python -m tests.rebind_child HOSTS` expects `HOSTS` to be bind-mounted on /etc/hosts, naming
`hook.example` at a public address. It serves the app on loopback, submits a job whose webhook
is `https://hook.example/in`, then points the name at 127.0.0.1 (where a listener counts
connections) while the job runs, and prints what became of the delivery as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app import create_app
from pipeline.settings import Settings

from .ports import free_port
from .webhook_receiver import new_secret

HOOK = "https://hook.example/in"
TIMEOUT_S = 30.0


async def main(hosts: Path) -> dict[str, Any]:
    connections = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", 443)
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, llm_provider="offline",
                        offline_llm_delay_ms=300, rate_limit_per_minute=0, drain_s=1,
                        webhook_secret=new_secret(), webhook_backoff_s=0.05,
                        webhook_max_attempts=2, webhook_timeout_s=2)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while not server.started:
                await asyncio.sleep(0.01)
            submit = await client.post("/api/jobs", json={"topic": "Bees", "webhook": HOOK})
            # Between the check at submit and the delivery, the name moves to loopback.
            hosts.write_text("127.0.0.1 localhost hook.example\n")
            job = submit.json()
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    job = (await client.get(f"/api/jobs/{job['id']}")).json()
                    hook = job.get("webhook") or {}
                    if job["status"] == "succeeded" and hook.get("pending") == 0:
                        break
                    await asyncio.sleep(0.05)
    finally:
        server.should_exit = True
        await serving
        listener.close()
    return {"submit": submit.status_code, "status": job["status"], "webhook": job.get("webhook"),
            "connections": connections}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
