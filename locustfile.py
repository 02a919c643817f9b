"""Locust load test: each user submits a topic and follows the job's event stream to the end.

    locust -f locustfile.py --headless -u 20 -r 10 -t 20s --host http://127.0.0.1:8000

Besides the HTTP requests, two custom entries (request type `SSE`) are reported:
`time to first event` and `time to done`, both counted from the submit, as a user feels them.
A stream that ends on `error` or `cancelled`, or closes without a terminal event, is a failure
of `time to done`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

from locust import HttpUser, between, task
from requests import RequestException

from pipeline.contract import TERMINAL_EVENTS

TOPICS = (
    "Home composting",
    "Rainwater harvesting",
    "Urban beekeeping",
    "Sourdough baking",
    "Bicycle maintenance",
)
# (connect, read): read is per gap between bytes, and heartbeats keep a quiet stream alive
STREAM_TIMEOUT_S = (10.0, 60.0)


class ArticleUser(HttpUser):
    """One reader: submit, then read the stream with `requests` until the terminal event.

    Built on HttpUser because FastHttpUser's line iterator holds SSE lines back.
    """

    wait_time = between(0.5, 2.0)

    def _report(self, name: str, started: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="SSE",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={},
        )

    @task
    def write_article(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            "/api/jobs", json={"topic": random.choice(TOPICS)}, catch_response=True
        ) as submit:
            if submit.status_code != 202:
                submit.failure(f"submit answered {submit.status_code}: {submit.text[:200]}")
                return
            job_id = submit.json()["id"]

        with self.client.get(
            f"/api/jobs/{job_id}/events",
            name="/api/jobs/[id]/events",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=STREAM_TIMEOUT_S,
            catch_response=True,  # still timed to the headers: locust measures before the body
        ) as stream:
            if stream.status_code != 200:
                stream.failure(f"stream answered {stream.status_code}")
                return
            try:
                terminal, data = self._follow(stream.iter_lines(chunk_size=None), started)
            except RequestException as exc:
                self._report("time to done", started, exc)
                return
        if terminal == "done":
            self._report("time to done", started)
        elif terminal is None:
            self._report("time to done", started,
                         RuntimeError("stream closed before a terminal event"))
        else:
            self._report("time to done", started,
                         RuntimeError(f"job ended {terminal}: {data.get('code')}"))

    def _follow(self, lines: Iterator[bytes], started: float) -> tuple[str | None, dict[str, Any]]:
        """Read SSE lines to the terminal event: its type and data (None if the stream ended).

        `chunk_size=None` above makes `requests` yield each chunk as it arrives, not once
        512 bytes have piled up.
        """
        first_event_seen = False
        event = "message"
        for raw in lines:
            line = raw.decode("utf-8")
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                if not first_event_seen:
                    first_event_seen = True
                    self._report("time to first event", started)
                if event in TERMINAL_EVENTS:
                    return event, json.loads(line.partition(":")[2])
            elif line == "":
                event = "message"
        return None, {}
