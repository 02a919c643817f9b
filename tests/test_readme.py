"""The README's transcript ("One job, end to end") is what the service sends.

`bench/transcript.py` records it from a real run. These tests compare its structure with a live
run: event ids, event names (a run of `delta` events counts once, since their number depends on
timing), the field names of every event's data and of the submit's answer; never the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from .conftest import ROOT
from .sse_client import Event, submit

START_MARKER = "<!-- transcript:start -->"
END_MARKER = "<!-- transcript:end -->"
RERECORD = "re-record it with `.venv/bin/python bench/transcript.py`"


@dataclass
class Transcript:
    submitted: dict[str, Any]
    stream_path: str
    stream: str


def readme_transcript() -> Transcript:
    """The transcript between the README's markers."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(START_MARKER):text.index(END_MARKER)]
    console = re.search(r"```console\n\$ curl -s -X POST \S+/api/jobs .*\n(.+)\n"
                        r"\$ curl -N \S+?(/api/jobs/\S+/events)\n```", block)
    stream = re.search(r"```text\n(.*?)\n```", block, flags=re.DOTALL)
    assert console and stream, f"the README's transcript has lost its shape; {RERECORD}"
    return Transcript(json.loads(console[1]), console[2], stream[1])


def parse_stream(raw: str) -> list[Event]:
    """The events of a raw stream as the server frames it (one line per field, LF, `: ` after
    each name); `retry:` hints and comments are skipped."""
    events: list[Event] = []
    for block in raw.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append(Event(int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def shape(value: Any) -> Any:
    """A JSON value's field names, nested; not its values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return None


def structure(events: list[Event]) -> list[tuple[str, Any]]:
    """Each event's name and data shape, in order; a run of deltas counts once."""
    items: list[tuple[str, Any]] = []
    for event in events:
        item = (event.event, shape(event.data))
        if not (event.event == "delta" and items and items[-1] == item):
            items.append(item)
    return items


def test_readme_done_frame_is_the_finished_job() -> None:
    transcript = readme_transcript()
    events = parse_stream(transcript.stream)
    done = events[-1]
    assert done.event == "done"
    assert done.data["id"] == transcript.submitted["id"]
    assert transcript.stream_path == transcript.submitted["links"]["events"]
    assert (done.data["status"], done.data["stage"], done.data["progress"]) == ("succeeded", "done", 100)
    assert isinstance(done.data["article"], str) and done.data["article"].strip()


def test_readme_transcript_matches_a_live_run(start_server: Any) -> None:
    server = start_server()
    job = submit(server.url, "Home composting")
    with httpx.stream("GET", f"{server.url}/api/jobs/{job['id']}/events", timeout=20) as response:
        assert response.status_code == 200
        live_raw = b"".join(response.iter_raw()).decode()
    transcript = readme_transcript()
    readme_events, live_events = parse_stream(transcript.stream), parse_stream(live_raw)

    assert shape(transcript.submitted) == shape(job), RERECORD
    first_block = {transcript.stream.split("\n\n", 1)[0], live_raw.split("\n\n", 1)[0]}
    assert first_block == {"retry: 2000"}
    for events in (readme_events, live_events):
        assert [event.id for event in events] == list(range(1, len(events) + 1))
    assert structure(readme_events) == structure(live_events), RERECORD
