"""Several Fly machines without Redis: a request for another machine's job is replayed there.

Each test runs two instances with different FLY_MACHINE_IDs and plays Fly's proxy: when an
answer carries `fly-replay: instance=<id>`, it sends the same request to that instance, with
`fly-replay-src` as the proxy adds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .redis_server import RedisServer
from .sse_client import read_stream, submit
from .test_limits import assert_error

MACHINES = ("148e21ea7e4389", "5683d3dbc25e48")


@pytest.fixture
def machines(start_server: Callable[..., Any]) -> dict[str, Any]:
    return {machine: start_server(FLY_MACHINE_ID=machine) for machine in MACHINES}


def through_proxy(machines: dict[str, Any], landed_on: str, method: str, path: str,
                  **kwargs: Any) -> tuple[httpx.Response, list[str]]:
    """The request as Fly's proxy serves it, and the answers it saw on the way."""
    seen: list[str] = []
    target, headers = landed_on, dict(kwargs.pop("headers", {}))
    for _ in range(2):
        response = httpx.request(method, machines[target].url + path, headers=headers,
                                 timeout=10, **kwargs)
        seen.append(f"{target}: {response.status_code} fly-replay={response.headers.get('fly-replay')}")
        replay = response.headers.get("fly-replay")
        if replay is None:
            return response, seen
        target = replay.removeprefix("instance=")
        headers["fly-replay-src"] = f"instance={landed_on};state="
    raise AssertionError(f"replayed twice: {seen}")


def test_a_job_id_names_its_machine_and_the_other_machine_replays_it(
        machines: dict[str, Any]) -> None:
    holder, other = MACHINES
    job = submit(machines[holder].url)
    assert job["id"].startswith(f"j_{holder}.")
    for method in ("GET", "DELETE"):
        direct = httpx.request(method, f"{machines[other].url}/api/jobs/{job['id']}")
        assert_error(direct, 421, "held_elsewhere")
        assert direct.headers["fly-replay"] == f"instance={holder}"
    response, seen = through_proxy(machines, other, "GET", f"/api/jobs/{job['id']}")
    assert response.status_code == 200 and response.json()["id"] == job["id"]
    assert seen == [f"{other}: 421 fly-replay=instance={holder}", f"{holder}: 200 fly-replay=None"]


def test_a_stream_that_reconnects_on_the_wrong_machine_lands_on_the_holder(
        machines: dict[str, Any]) -> None:
    holder, other = MACHINES
    job = submit(machines[holder].url)
    head = read_stream(machines[holder].url, job["id"], until=3)
    response, seen = through_proxy(machines, other, "GET", f"/api/jobs/{job['id']}/events",
                                   headers={"Last-Event-ID": str(head[-1].id)})
    assert seen[0] == f"{other}: 421 fly-replay=instance={holder}"
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(head[-1].id + 1, ids[-1] + 1))
    assert "event: done" in response.text


def test_a_replay_that_lands_wrong_again_is_not_found(machines: dict[str, Any]) -> None:
    holder, other = MACHINES
    job = submit(machines[holder].url)
    # Fly's proxy replays once; if the holder is gone, the job is gone with it.
    response = httpx.get(f"{machines[other].url}/api/jobs/{job['id']}",
                         headers={"fly-replay-src": f"instance={other};state="})
    assert_error(response, 404, "not_found")
    forged = httpx.get(f"{machines[other].url}/api/jobs/j_evil.AAAAAAAAAAAAAAAAAAAAAA")
    assert forged.headers.get("fly-replay") == "instance=evil"  # well-formed: asked to replay
    assert_error(httpx.get(f"{machines[other].url}/api/jobs/j_Evil-1.x"), 404, "not_found")


def test_with_redis_ids_stay_plain_and_any_machine_serves_any_job(
        start_server: Callable[..., Any], redis_server: RedisServer) -> None:
    a, b = (start_server(FLY_MACHINE_ID=machine, REDIS_URL=redis_server.url)
            for machine in MACHINES)
    job = submit(a.url)
    assert "." not in job["id"]
    response = httpx.get(f"{b.url}/api/jobs/{job['id']}")
    assert response.status_code == 200 and "fly-replay" not in response.headers
