"""Reading a job's event stream the way a client does, with httpx and httpx-sse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

TERMINAL = {"done", "error", "cancelled"}


@dataclass
class Event:
    id: int
    event: str
    data: Any


def read_stream(base_url: str, job_id: str, *, headers: dict[str, str] | None = None,
                until: int | None = None, timeout: float = 20.0) -> list[Event]:
    """Every event until the terminal one (or `until` events), with a timeout on each read."""
    events: list[Event] = []
    with httpx.Client(timeout=timeout) as client:
        with connect_sse(client, "GET", f"{base_url}/api/jobs/{job_id}/events",
                         headers=headers or {}) as source:
            source.response.raise_for_status()
            for sse in source.iter_sse():
                if not sse.data:
                    # httpx-sse 0.4.3 dispatches `retry:` frames and comments as empty
                    # events (florimondmanca/httpx-sse#35); a WHATWG parser does not.
                    continue
                events.append(Event(int(sse.id), sse.event, json.loads(sse.data)))
                if sse.event in TERMINAL or (until is not None and len(events) >= until):
                    break
    return events


def submit(base_url: str, topic: str = "Home composting", **kwargs: Any) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/api/jobs", json={"topic": topic}, timeout=10, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def get_job(base_url: str, job_id: str, token: str | None = None) -> dict[str, Any]:
    """The job as GET shows it (asserting it is there)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{base_url}/api/jobs/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def part_texts(events: list[Event]) -> dict[tuple[str, int | None], str]:
    """Each part's text as a client builds it from `delta` events, honouring `reset`."""
    texts: dict[tuple[str, int | None], str] = {}
    for event in events:
        if event.event == "delta":
            part = (event.data["stage"], event.data["index"])
            held = "" if event.data["reset"] else texts.get(part, "")
            texts[part] = held + event.data["text"]
    return texts
