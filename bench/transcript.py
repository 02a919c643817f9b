"""Record one real job, end to end, into the README's transcript section.

Run from the repository root: `.venv/bin/python bench/transcript.py`.
It starts the service itself on a free 127.0.0.1 port (offline writer, `OFFLINE_LLM_DELAY_MS=300`),
submits a topic, reads the job's whole event stream as raw bytes, rewrites the README between
the transcript markers and prints what it wrote. `tests/test_readme.py` checks the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from _server import ROOT, run_server

START_MARKER = "<!-- transcript:start -->"
END_MARKER = "<!-- transcript:end -->"
REQUEST_BODY = json.dumps({"topic": "Home composting"})
DELAY_MS = 300
STREAM_TIMEOUT_S = 30.0
# What the reader types: the README's own `python app.py` listens on port 8000.
SHOWN_URL = "localhost:8000"


def record() -> tuple[str, str]:
    """(the POST response body, the whole event stream) of one job, as the server sent them."""
    with run_server(OFFLINE_LLM_DELAY_MS=str(DELAY_MS)) as server:
        with httpx.Client(base_url=server.url, timeout=STREAM_TIMEOUT_S) as client:
            response = client.post("/api/jobs", content=REQUEST_BODY,
                                   headers={"content-type": "application/json"})
            if response.status_code != 202:
                raise SystemExit(f"POST /api/jobs answered {response.status_code}: {response.text}")
            job_id = response.json()["id"]
            with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
                stream.raise_for_status()
                raw = b"".join(stream.iter_raw())  # the server ends it after the terminal event
    return response.content.decode(), raw.decode()


def render(post_body: str, stream: str) -> str:
    """The Markdown between the markers: both curl commands, their output, the whole stream."""
    job_id = json.loads(post_body)["id"]
    last_frame = stream.strip("\n").rsplit("\n\n", 1)[-1]
    if "event: done" not in last_frame.splitlines():
        raise SystemExit(f"the job did not end `done`; its last frame:\n{last_frame}")
    if "```" in post_body + stream:
        raise SystemExit("the transcript holds ``` and would break its code fence")
    return "\n".join([
        START_MARKER,
        "Recorded from a real run (served on a free loopback port) by",
        "`.venv/bin/python bench/transcript.py`; `tests/test_readme.py` fails when the service no",
        "longer sends this shape.",
        "",
        "```console",
        f"$ curl -s -X POST {SHOWN_URL}/api/jobs -H 'content-type: application/json' -d '{REQUEST_BODY}'",
        post_body,
        f"$ curl -N {SHOWN_URL}/api/jobs/{job_id}/events",
        "```",
        "",
        "<details><summary>The whole stream (offline writer, "
        f"<code>OFFLINE_LLM_DELAY_MS={DELAY_MS}</code>)</summary>",
        "",
        "```text",
        stream.rstrip("\n"),
        "```",
        "",
        "</details>",
        END_MARKER,
    ])


def rewrite(readme: Path, block: str) -> None:
    text = readme.read_text()
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {START_MARKER} ... {END_MARKER} section")
    readme.write_text(text[:start] + block + text[end + len(END_MARKER):])


def main() -> None:
    block = render(*record())
    rewrite(ROOT / "README.md", block)
    print(block)


if __name__ == "__main__":
    main()
