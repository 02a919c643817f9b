"""A job's `usage`: the tokens the real anthropic SDK reported, the calls, and their cost.

The SDK talks to the scripted Messages API of `anthropic_mock` over httpx2.MockTransport:
every good reply reports INPUT_TOKENS input tokens and one output token per text chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from pipeline.job import Job
from pipeline.redis_store import decode_job, encode_job
from pipeline.settings import Settings
from pipeline.usage import CallUsage, Pricing, Usage, table_price

from .anthropic_mock import (
    FAST_RETRY,
    INPUT_TOKENS,
    MODEL,
    Call,
    FakeAnthropic,
    cut_reply,
    expected_text,
    good_answer,
    reply,
    settings,
    status,
)
from .redis_server import RedisServer

TOPIC = "Home composting"
PRICED_MODEL = "claude-sonnet-5-5"  # $2 in, $10 out per million tokens
#: every good reply of the mock is cut into this many chunks: its output tokens
PIECES = 4
WAIT_S = 20


def run_job(serve_app: Any, answer: Callable[[Call], httpx2.Response],
            **overrides: Any) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], str]:
    """One job through the real SDK: the job on GET, in the list, its events, and /metrics."""
    fake = FakeAnthropic(answer)
    config = settings(**overrides)
    served = serve_app(create_app(config, provider=fake.provider(config)))
    with httpx.Client(base_url=served.url, timeout=WAIT_S) as client:
        submitted = client.post("/api/jobs", json={"topic": TOPIC},
                                headers={"Prefer": f"wait={WAIT_S}"})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        got = client.get(f"/api/jobs/{job_id}").json()
        [listed] = client.get("/api/jobs").json()["jobs"]
        events = events_of(client, job_id)
        metrics = client.get("/metrics").text
    return got, listed, events, metrics


def events_of(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every event of an ended job, as {"event": name, "data": ...}."""
    found: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append({"event": name, "data": json.loads(line.removeprefix("data: "))})
    return found


def usage(calls: int, input_tokens: int, output_tokens: int, cost: float | None) -> dict[str, Any]:
    return {"llm_calls": calls, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cost_usd": cost}


def sample(metrics: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


# -- through the SDK --------------------------------------------------------------------------


def test_a_job_shows_its_usage_and_cost_everywhere(serve_app: Any) -> None:
    got, listed, events, metrics = run_job(serve_app, good_answer, anthropic_model=PRICED_MODEL)

    # Outline, three sections, style: five calls, each 12 tokens in and 4 out.
    expected = usage(5, 5 * INPUT_TOKENS, 5 * PIECES, (60 * 2 + 20 * 10) / 1e6)
    assert got["status"] == "succeeded"
    assert got["usage"] == expected
    assert listed["usage"] == expected
    [done] = [event["data"] for event in events if event["event"] == "done"]
    assert done["usage"] == expected

    tokens = "articlestream_llm_tokens_total"
    assert sample(metrics, tokens, provider="anthropic", model=PRICED_MODEL, kind="input") == 60
    assert sample(metrics, tokens, provider="anthropic", model=PRICED_MODEL, kind="output") == 20
    cost = sample(metrics, "articlestream_llm_cost_usd_total", provider="anthropic",
                  model=PRICED_MODEL)
    assert cost == pytest.approx(0.00032)
    calls = "articlestream_llm_call_duration_seconds_count"
    assert sample(metrics, calls, provider="anthropic", node="outline") == 1
    assert sample(metrics, calls, provider="anthropic", node="content") == 3
    assert sample(metrics, calls, provider="anthropic", node="style") == 1


def test_the_sdks_own_retries_add_no_call_and_no_tokens(serve_app: Any) -> None:
    # A 529 then a 500 before the outline's good reply: the SDK retries them itself; error
    # answers carry no usage, and the job made one call for its outline.
    def answer(call: Call) -> httpx2.Response:
        if call.task == "outline" and call.attempt == 1:
            return status(529, headers=FAST_RETRY)
        if call.task == "outline" and call.attempt == 2:
            return status(500, headers=FAST_RETRY)
        return good_answer(call)

    got, _, _, _ = run_job(serve_app, answer, anthropic_model=PRICED_MODEL)
    assert got["status"] == "succeeded"
    assert got["usage"] == usage(5, 60, 20, 0.00032)


def test_a_stream_broken_midway_counts_what_it_reported(serve_app: Any) -> None:
    # The first section's first reply breaks after message_start (12 in, 1 out) and two chunks;
    # LLM.generate tries it again. Both attempts are calls, and both are billed.
    first_section: list[str] = []

    def answer(call: Call) -> httpx2.Response:
        if call.task == "section" and not first_section:
            first_section.append(call.prompt)
        if call.task == "section" and call.prompt == first_section[0] and call.attempt == 1:
            return cut_reply(expected_text(call.prompt), pieces=PIECES, keep=2)
        return good_answer(call)

    got, listed, events, _ = run_job(serve_app, answer, anthropic_model=PRICED_MODEL)
    assert got["status"] == "succeeded"
    expected = usage(6, 6 * INPUT_TOKENS, 5 * PIECES + 1, (72 * 2 + 21 * 10) / 1e6)
    assert got["usage"] == expected == listed["usage"]
    assert any(event["data"].get("reset") for event in events if event["event"] == "delta")


def test_a_failed_job_keeps_the_usage_of_its_calls(serve_app: Any) -> None:
    # The style pass gets 500s until the SDK gives up: a call with nothing reported.
    def answer(call: Call) -> httpx2.Response:
        return status(500, headers=FAST_RETRY) if call.task == "style" else good_answer(call)

    got, listed, events, _ = run_job(serve_app, answer, anthropic_model=PRICED_MODEL)
    assert got["status"] == "failed"
    assert events[-1]["event"] == "error"
    expected = usage(5, 4 * INPUT_TOKENS, 4 * PIECES, (48 * 2 + 16 * 10) / 1e6)
    assert got["usage"] == expected == listed["usage"]


def test_an_unknown_model_has_no_cost(serve_app: Any) -> None:
    got, _, _, metrics = run_job(serve_app, good_answer)  # MODEL is in no price table
    assert got["usage"] == usage(5, 60, 20, None)
    assert sample(metrics, "articlestream_llm_tokens_total", provider="anthropic", model=MODEL,
                  kind="input") == 60
    assert sample(metrics, "articlestream_llm_cost_usd_total", provider="anthropic",
                  model=MODEL) is None


def test_llm_price_per_mtok_prices_any_model(serve_app: Any) -> None:
    config = Settings.from_env({"LLM_PRICE_PER_MTOK": "1.5, 7"})
    got, _, _, _ = run_job(serve_app, good_answer, llm_price_per_mtok=config.llm_price_per_mtok)
    assert got["usage"] == usage(5, 60, 20, (60 * 1.5 + 20 * 7) / 1e6)


@pytest.mark.parametrize("value", ["3", "3,15,1", "three,15", "-1,2", "inf,1"])
def test_a_bad_llm_price_per_mtok_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="LLM_PRICE_PER_MTOK"):
        Settings.from_env({"LLM_PRICE_PER_MTOK": value})


# -- the offline writer, Redis, the document ---------------------------------------------------


def test_the_offline_writer_counts_calls_at_no_cost(start_server: Any) -> None:
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        job = client.post("/api/jobs", json={"topic": TOPIC},
                          headers={"Prefer": f"wait={WAIT_S}"}).json()
        assert job["status"] == "succeeded"
        assert job["usage"] == usage(5, 0, 0, 0.0)
        metrics = client.get("/metrics").text
    assert sample(metrics, "articlestream_llm_tokens_total", provider="offline", model="offline",
                  kind="output") == 0


def test_usage_survives_redis(start_server: Any, redis_server: RedisServer) -> None:
    server = start_server(REDIS_URL=redis_server.url)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        job = client.post("/api/jobs", json={"topic": TOPIC},
                          headers={"Prefer": f"wait={WAIT_S}"}).json()
        assert job["status"] == "succeeded"
        assert client.get(f"/api/jobs/{job['id']}").json()["usage"] == usage(5, 0, 0, 0.0)
        assert client.get("/api/jobs").json()["jobs"][0]["usage"] == usage(5, 0, 0, 0.0)


def test_a_stored_job_keeps_its_usage_and_trace() -> None:
    # What a resumed job starts from on another instance: the job as Redis holds it.
    job = Job(topic=TOPIC, trace="ab" * 16 + "-" + "cd" * 8 + "-" + "ef" * 8 + "-01")
    job.used(CallUsage(PRICED_MODEL, 100, 50, 0.0007))
    job.used(CallUsage(PRICED_MODEL, 10, 0, None))
    stored = decode_job({key.encode(): value.encode() for key, value in encode_job(job).items()})
    assert stored.usage == Usage(2, 110, 50, None)
    assert stored.trace == job.trace


def test_usage_is_in_the_openapi_document(serve_app: Any) -> None:
    served = serve_app(create_app(settings(llm_provider="offline", anthropic_api_key=None)))
    document = httpx.get(f"{served.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "usage" in schemas["Job"]["required"]
    assert schemas["Job"]["properties"]["usage"]["$ref"] == "#/components/schemas/Usage"
    assert set(schemas["Usage"]["properties"]) == {"llm_calls", "input_tokens", "output_tokens",
                                                   "cost_usd"}


# -- the price table --------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "key"), [
    ("claude-sonnet-5-5", "claude-sonnet-5-5"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-opus-4", "claude-opus-4"),
    ("claude-opus-4-20250514", "claude-opus-4"),
    ("claude-haiku-5-5-latest", "claude-haiku-5-5"),
    ("claude-sonnet-4-5-turbo", None),
    ("gpt-5", None),
])
def test_models_find_their_price(model: str, key: str | None) -> None:
    assert table_price(model) == key


def test_a_long_prompt_on_haiku_5_5_has_the_higher_price() -> None:
    pricing = Pricing()
    # in billionths of a dollar: $0.50 and $2.50 a million tokens above 100,000 prompt tokens
    assert pricing.cost_nanousd("claude-haiku-5-5", 100_000, 1_000) == 10_500_000
    assert pricing.cost_nanousd("claude-haiku-5-5", 100_001, 1_000) == 100_001 * 500 + 1_000 * 2_500


def test_the_default_model_has_a_price() -> None:
    assert table_price(Settings().anthropic_model) is not None


def test_reply_usage_of_the_mock() -> None:
    # The numbers the tests above rely on: 12 tokens in, one out per chunk.
    body = reply("one two three four", pieces=PIECES).content.decode()
    assert f'"input_tokens": {INPUT_TOKENS}' in body
    assert f'"output_tokens": {PIECES}' in body
