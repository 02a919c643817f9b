"""Live text: coalesced `delta` events whose concatenation is exactly the final text."""

from __future__ import annotations

import time
from typing import Any

import anyio

from app import create_app
from pipeline.contract import Stage
from pipeline.deltas import DeltaCoalescer, LiveParts
from pipeline.payloads import DeltaEvent
from pipeline.settings import Settings

from .scripted import GOOD_OUTLINE, Broken, ScriptedProvider
from .sse_client import part_texts, read_stream, submit


def test_the_coalescer_sends_at_most_one_delta_per_interval() -> None:
    coalescer = DeltaCoalescer(interval_s=0.05)
    part = (Stage.content, 0)
    sent: list[DeltaEvent] = []
    chunks = [f"w{n} " for n in range(1000)]
    for n, chunk in enumerate(chunks):  # one chunk a millisecond, for a second
        now = n / 1000
        if delta := coalescer.add(part, chunk, now):
            sent.append(delta)
        sent.extend(coalescer.due(now))
    sent.extend(coalescer.flush_all(1.0))
    assert len(sent) <= 1.0 / 0.05 + 2
    assert "".join(d.text for d in sent) == "".join(chunks)


def deltas_per_part(jobs: int, live: LiveParts) -> float:
    """Deltas each part sends when `jobs` jobs stream three parts at once, a chunk a ms for 1 s."""
    coalescers = [DeltaCoalescer(interval_s=0.05, live=live) for _ in range(jobs)]
    parts = [(Stage.content, index) for index in range(3)]
    sent = 0
    for n in range(1000):
        now = n / 1000
        for coalescer in coalescers:
            sent += sum(1 for part in parts if coalescer.add(part, "w ", now))
    for coalescer in coalescers:
        sent += len(coalescer.flush_all(1.0))
    assert live.count == 0, "every part was released when its job's text ended"
    return sent / (jobs * len(parts))


def test_under_load_parts_send_fewer_deltas_not_more() -> None:
    # 3 jobs stream 9 parts, well under 600 deltas a second: the interval rules.
    assert deltas_per_part(3, LiveParts(per_s=600)) == 1.0 / 0.05 + 1
    # 100 jobs stream 300 parts: at most 600 a second in all, so about 2 a part a second.
    assert deltas_per_part(100, LiveParts(per_s=600)) <= 3


def test_a_job_that_stops_midway_releases_its_parts() -> None:
    live = LiveParts(per_s=600)
    coalescer = DeltaCoalescer(interval_s=0.05, live=live)
    coalescer.add((Stage.content, 0), "some text", 0.0)
    coalescer.add((Stage.content, 1), "more text", 0.0)
    assert live.count == 2
    coalescer.close()
    coalescer.close()
    assert live.count == 0


def test_a_reset_voids_held_text_and_marks_the_next_delta() -> None:
    coalescer = DeltaCoalescer(interval_s=10)
    part = (Stage.style, None)
    assert coalescer.add(part, "first try ", 0.0) == DeltaEvent(
        stage=Stage.style, index=None, text="first try ", reset=False)
    coalescer.add(part, "held, never sent", 1.0)
    coalescer.reset(part)
    coalescer.add(part, "second try", 2.0)
    assert coalescer.flush(part, 3.0) == DeltaEvent(
        stage=Stage.style, index=None, text="second try", reset=True)


def test_a_reset_before_anything_was_sent_needs_no_reset_flag() -> None:
    coalescer = DeltaCoalescer(interval_s=10)
    part = (Stage.content, 2)
    coalescer.reset(part)
    # A part's first text goes out at once, and there is nothing for clients to drop.
    assert coalescer.add(part, "fresh", 1.0) == DeltaEvent(
        stage=Stage.content, index=2, text="fresh", reset=False)


def test_replay_from_a_mid_delta_id_rebuilds_the_same_text(start_server) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="150")
    job = submit(server.url)
    head = read_stream(server.url, job["id"], until=7)
    assert head[-1].event == "delta"
    tail = read_stream(server.url, job["id"], headers={"Last-Event-ID": str(head[-1].id)})
    texts = part_texts(head + tail)
    for section in (e.data for e in tail if e.event == "section"):
        assert texts[("content", section["index"])] == section["content"]
    assert texts[("style", None)] == tail[-1].data["article"]


def test_deltas_can_be_turned_off(start_server) -> None:
    server = start_server(STREAM_DELTAS="0")
    events = read_stream(server.url, submit(server.url)["id"])
    assert "delta" not in {e.event for e in events}
    assert events[-1].event == "done"


def _settings(**overrides: Any) -> Settings:
    # No service-wide budget spacing deltas out: one job is not a load.
    return Settings(llm_provider="offline", rate_limit_per_minute=0, drain_s=1,
                    deltas_per_s=10**9, **overrides)


def test_a_stream_broken_midway_is_retried_and_clients_drop_the_partial_text(serve_app) -> None:
    provider = ScriptedProvider({
        "outline": [GOOD_OUTLINE],
        "section": ["Alpha text in full.", "Beta text in full.", "Gamma text in full."],
        "style": [Broken("A first try that breaks "), "The styled article, whole."],
    })
    served = serve_app(create_app(_settings(delta_interval_ms=0), provider=provider))
    events = read_stream(served.url, submit(served.url)["id"])
    style = [e.data for e in events if e.event == "delta" and e.data["stage"] == "style"]
    assert any(d["reset"] for d in style)
    first_reset = next(n for n, d in enumerate(style) if d["reset"])
    assert "".join(d["text"] for d in style[:first_reset]) == "A first try that breaks "
    assert part_texts(events)[("style", None)] == "The styled article, whole."
    assert events[-1].data["article"] == "The styled article, whole."
    assert provider.calls["style"] == 2


class PacedProvider(ScriptedProvider):
    """Streams 300 one-word chunks a millisecond apart: far faster than the delta interval."""

    async def stream(self, prompt: str, *, max_tokens: int):  # type: ignore[override]
        if prompt.startswith("Task: outline"):
            yield GOOD_OUTLINE
            return
        for n in range(300):
            await anyio.sleep(0.001)
            yield f"w{n} "


def test_the_coalescing_bound_holds_under_a_fast_stream(serve_app) -> None:
    served = serve_app(create_app(_settings(delta_interval_ms=50), provider=PacedProvider()))
    started = time.monotonic()
    events = read_stream(served.url, submit(served.url)["id"])
    elapsed = time.monotonic() - started
    deltas: dict[Any, int] = {}
    for event in events:
        if event.event == "delta":
            part = (event.data["stage"], event.data["index"])
            deltas[part] = deltas.get(part, 0) + 1
    assert len(deltas) == 4
    # At most one per interval, plus the first and the final flush.
    assert max(deltas.values()) <= elapsed / 0.05 + 2, (deltas, elapsed)
    expected = "".join(f"w{n} " for n in range(300))
    assert all(text == expected for part, text in part_texts(events).items()
               if part[0] == "content")
