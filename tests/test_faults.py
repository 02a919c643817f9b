"""The LLM fault matrix, end to end: the real SDK behind a real uvicorn, two live subscribers.

Each case scripts one fault into the mock Anthropic API, runs a job, and checks what a client
would: both subscribers get the same events and the same terminal event, GET shows the same
outcome, and afterwards nothing is left running. `pytest -v` reads as the matrix.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from anyio.abc import TaskStatus
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from pipeline.outline import parse_outline
from pipeline.prompts import outline_prompt

from .anthropic_mock import (
    API_KEY,
    FAST_RETRY,
    Answer,
    Call,
    FakeAnthropic,
    cut_reply,
    expected_text,
    good_answer,
    malformed_reply,
    reply,
    settings,
    status,
)

pytestmark = pytest.mark.anyio

TOPIC = "Home composting"
SECTIONS = 3
TITLES = parse_outline(expected_text(outline_prompt(TOPIC, SECTIONS)))
WAIT_S = 20.0  # the most any one case may take; each case needs a few seconds at most


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the faults -------------------------------------------------------------------------------


def on(task: str, fault: Answer, *, attempts: int | None = None,
       section: int | None = None) -> Answer:
    """`fault` for calls of `task` (optionally only early tries, or one section); else good."""
    def answer(call: Call) -> httpx2.Response | Awaitable[httpx2.Response]:
        hit = call.task == task and (attempts is None or call.attempt <= attempts)
        if section is not None:
            hit = hit and f"\nSection: {TITLES[section]}\n" in call.prompt
        return fault(call) if hit else good_answer(call)

    return answer


def read_timeout(call: Call) -> httpx2.Response:
    raise httpx2.ReadTimeout("timed out reading the response")


async def no_answer(call: Call) -> httpx2.Response:
    await anyio.sleep(60)
    raise AssertionError("the call should have been cancelled by now")


def cut_first_tries(call: Call) -> httpx2.Response:
    """Every section's and the style pass's first reply breaks off after two chunks."""
    if call.task != "outline" and call.attempt == 1:
        return cut_reply(expected_text(call.prompt), keep=2)
    return good_answer(call)


@dataclass(frozen=True)
class Fault:
    id: str
    answer: Answer
    outcome: str  # "done", or the job's error code
    calls: dict[str, int]  # HTTP requests the SDK made, by the prompt's task
    overrides: dict[str, Any] = field(default_factory=dict)
    #: requests for one section, by its index (the calls for its siblings depend on timing)
    section_calls: dict[int, int] = field(default_factory=dict)
    #: the parts whose deltas must show `"reset": true`
    resets: frozenset[tuple[str, int | None]] = frozenset()


LEAKY = f"invalid x-api-key {API_KEY}"  # an error body that quotes the key

FAULTS = [
    Fault("read-timeout", on("outline", read_timeout), "llm_timeout", {"outline": 3}),
    Fault("slower-than-LLM_TIMEOUT", on("outline", no_answer), "llm_timeout", {"outline": 1},
          {"llm_timeout_s": 0.5}),
    Fault("429-retry-after",
          on("outline", lambda c: status(429, headers={"retry-after": "0.05"}, message=LEAKY)),
          "llm_rate_limited", {"outline": 3}),
    Fault("529-then-success", on("outline", lambda c: status(529, headers=FAST_RETRY), attempts=1),
          "done", {"outline": 2, "section": SECTIONS, "style": 1}),
    Fault("529-forever", on("outline", lambda c: status(529, headers=FAST_RETRY)),
          "llm_overloaded", {"outline": 3}),
    Fault("500-in-one-section",
          on("section", lambda c: status(500, headers=FAST_RETRY, message=LEAKY), section=1),
          "llm_error", {"outline": 1, "style": 0}, section_calls={1: 3}),
    Fault("401-key-refused", on("outline", lambda c: status(401, message=LEAKY)), "llm_auth",
          {"outline": 1}),
    Fault("dropped-mid-stream-then-success", cut_first_tries, "done",
          {"outline": 1, "section": 2 * SECTIONS, "style": 2},
          resets=frozenset({("content", i) for i in range(SECTIONS)} | {("style", None)})),
    Fault("dropped-mid-stream-every-time", on("style", lambda c: cut_reply("Half a rep", keep=1)),
          "llm_error", {"outline": 1, "section": SECTIONS, "style": 3},
          resets=frozenset({("style", None)})),
    Fault("malformed-reply", on("outline", lambda c: malformed_reply()), "llm_error",
          {"outline": 1}),
    Fault("outline-never-yaml", on("outline", lambda c: reply("sections: [never, closed\n")),
          "bad_outline", {"outline": 3}),
    Fault("job-deadline", on("section", no_answer), "timeout", {"outline": 1, "section": SECTIONS},
          {"job_timeout_s": 1.5, "llm_timeout_s": 30.0}),
]


# -- a client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: Any


async def subscribe(url: str, job_id: str, *,
                    task_status: TaskStatus[list[Event]] = anyio.TASK_STATUS_IGNORED) -> None:
    """Read the job's stream to its end; started once the stream is open (its `retry:` line)."""
    events: list[Event] = []
    async with httpx.AsyncClient(timeout=WAIT_S) as client:
        async with client.stream("GET", f"{url}/api/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            task_status.started(events)
            fields: dict[str, str] = {}
            async for line in lines:
                if not line:
                    if "data" in fields:
                        events.append(Event(int(fields["id"]), fields["event"],
                                            json.loads(fields["data"])))
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")


async def scrape(client: httpx.AsyncClient) -> tuple[str, dict[str, float]]:
    """/metrics as text, and its unlabelled samples by name."""
    text = (await client.get("/metrics")).text
    values = {sample.name: sample.value
              for family in text_string_to_metric_families(text)
              for sample in family.samples if not sample.labels}
    return text, values


async def settle(client: httpx.AsyncClient, tasks_before: float) -> tuple[str, dict[str, float]]:
    """Wait (bounded) until no job runs, no stream is open and the tasks are back."""
    def settled(values: dict[str, float]) -> bool:
        return (values["articlestream_running_jobs"] == 0
                and values["articlestream_open_streams"] == 0
                and values["articlestream_asyncio_tasks"] <= tasks_before)

    with anyio.move_on_after(10):
        while not settled((scraped := await scrape(client))[1]):
            await anyio.sleep(0.02)
    return scraped


def parts_from_deltas(events: list[Event]) -> dict[tuple[str, int | None], str]:
    """What a client holds per part after applying every delta (with resets) in order."""
    held: dict[tuple[str, int | None], str] = {}
    for event in events:
        if event.type == "delta":
            part = (event.data["stage"], event.data["index"])
            held[part] = ("" if event.data["reset"] else held.get(part, "")) + event.data["text"]
    return held


# -- the matrix -------------------------------------------------------------------------------


# Ids read as the matrix: `test_llm_fault[529-forever->llm_overloaded]`.
@pytest.mark.parametrize("fault", [pytest.param(f, id=f"{f.id}->{f.outcome}") for f in FAULTS])
async def test_llm_fault(fault: Fault, serve_app: Any) -> None:
    gate = asyncio.Event()  # bound to the server's loop when the first call waits on it

    async def gated(call: Call) -> httpx2.Response:
        await gate.wait()  # hold the job until both subscribers are live
        answer = fault.answer(call)
        return await answer if isinstance(answer, Awaitable) else answer

    fake = FakeAnthropic(gated)
    config = settings(**fault.overrides)
    served = serve_app(create_app(config, provider=fake.provider(config)))

    async with httpx.AsyncClient(base_url=served.url, timeout=WAIT_S) as client:
        _, before = await scrape(client)
        submitted = await client.post("/api/jobs", json={"topic": TOPIC})
        assert submitted.status_code == 202
        job_id = submitted.json()["id"]

        with anyio.fail_after(WAIT_S):
            async with anyio.create_task_group() as tg:
                first = await tg.start(subscribe, served.url, job_id)
                second = await tg.start(subscribe, served.url, job_id)
                served.loop.call_soon_threadsafe(gate.set)

        # Both subscribers saw the whole stream, the same, ending in one terminal event.
        assert first == second
        assert [event.id for event in first] == list(range(1, len(first) + 1))
        terminal = first[-1]
        assert [e for e in first if e.type in ("done", "error", "cancelled")] == [terminal]

        job = (await client.get(f"/api/jobs/{job_id}")).json()
        if fault.outcome == "done":
            assert terminal.type == "done"
            assert job["status"] == "succeeded" and job["error"] is None
            assert job["article"] == terminal.data["article"]
            check_texts(fake, first, terminal.data["article"])
        else:
            assert terminal.type == "error"
            assert terminal.data["code"] == fault.outcome
            assert set(terminal.data) == {"code", "message"} and terminal.data["message"]
            assert job["status"] == "failed" and job["error"] == terminal.data
            assert job["article"] is None

        for task, count in fault.calls.items():
            assert fake.count(task) == count, f"{task} calls"
        for index, count in fault.section_calls.items():
            made = [c for c in fake.calls if f"\nSection: {TITLES[index]}\n" in c.prompt]
            assert len(made) == count, f"section {index} calls"
        resets = {(e.data["stage"], e.data["index"]) for e in first
                  if e.type == "delta" and e.data["reset"]}
        assert resets == fault.resets

        text, after = await settle(client, before["articlestream_asyncio_tasks"])
        assert after["articlestream_running_jobs"] == 0
        assert after["articlestream_open_streams"] == 0
        assert after["articlestream_asyncio_tasks"] <= before["articlestream_asyncio_tasks"]
        assert API_KEY not in text
        assert API_KEY not in json.dumps(job) and API_KEY not in json.dumps([e.data for e in first])


def check_texts(fake: FakeAnthropic, events: list[Event], article: str) -> None:
    """Sections and article are exactly the API's good replies, and the deltas rebuild them."""
    held = parts_from_deltas(events)
    sections = [e.data for e in events if e.type == "section"]
    assert sorted(s["index"] for s in sections) == list(range(SECTIONS))
    for section in sections:
        prompt = next(c.prompt for c in fake.calls
                      if re.search(f"^Section: {re.escape(section['title'])}$", c.prompt, re.M))
        assert section["content"] == expected_text(prompt)
        assert held[("content", section["index"])] == section["content"]
    style_prompt = next(c.prompt for c in fake.calls if c.task == "style")
    assert article == expected_text(style_prompt)
    assert held[("style", None)] == article
