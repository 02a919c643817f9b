"""The workflow with a scripted provider: outlines, retries, failures, the shared store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app import create_app
from pipeline.contract import Stage
from pipeline.errors import BadOutline, JobError, LLMError
from pipeline.flow import build_flow, new_shared, resume_stage
from pipeline.llm import LLM, call_llm
from pipeline.messages import Report, SectionWritten, StageStarted
from pipeline.outline import parse_outline
from pipeline.prompts import style_prompt
from pipeline.settings import Settings

from .scripted import GOOD_OUTLINE, ScriptedProvider
from .sse_client import read_stream, submit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def run_flow(provider: ScriptedProvider, **settings: Any) -> tuple[dict[str, Any], list[Report]]:
    config = Settings(llm_provider="offline", **settings)
    llm = LLM.from_settings(provider, config)
    queue: asyncio.Queue[Report] = asyncio.Queue()
    shared = new_shared("Home composting", queue)
    try:
        await build_flow(llm, config).run_async(shared)
    finally:
        messages = []
        while not queue.empty():
            messages.append(queue.get_nowait())
    return shared, messages


async def test_outline_in_a_code_fence_becomes_three_sections_and_an_article() -> None:
    provider = ScriptedProvider({"outline": [GOOD_OUTLINE], "style": ["Styled article."]})
    shared, messages = await run_flow(provider)
    assert shared["sections"] == ["Alpha", "Beta", "Gamma"]
    assert shared["final_article"] == "Styled article."
    assert shared["draft"].startswith("# Home composting\n\n## Alpha\n\n")
    assert sorted(m.index for m in messages if isinstance(m, SectionWritten)) == [0, 1, 2]
    assert [m.stage for m in messages if isinstance(m, StageStarted)] == ["outline", "content", "style"]
    assert provider.calls == {"outline": 1, "section": 3, "style": 1}


async def test_a_bare_yaml_outline_is_accepted() -> None:
    provider = ScriptedProvider({"outline": ["sections:\n  - One\n  - Two\n"]})
    shared, _ = await run_flow(provider)
    assert shared["sections"] == ["One", "Two"]


async def test_bad_yaml_then_good_is_retried() -> None:
    provider = ScriptedProvider({"outline": ["sections: [unclosed", GOOD_OUTLINE]})
    shared, _ = await run_flow(provider)
    assert shared["sections"] == ["Alpha", "Beta", "Gamma"]
    assert provider.calls["outline"] == 2


async def test_bad_yaml_every_time_fails_with_bad_outline() -> None:
    provider = ScriptedProvider({"outline": ["sections: [unclosed"]})
    with pytest.raises(BadOutline) as caught:
        await run_flow(provider, outline_attempts=3)
    assert caught.value.code == "bad_outline"
    assert "after 3 attempts" in caught.value.message
    assert provider.calls["outline"] == 3
    assert provider.calls["section"] == 0


async def test_a_provider_failure_is_not_retried_by_the_outline_node() -> None:
    provider = ScriptedProvider({"outline": [LLMError("refused", code="llm_auth")]})
    with pytest.raises(LLMError) as caught:
        await run_flow(provider)
    assert caught.value.code == "llm_auth"
    assert provider.calls["outline"] == 1


async def test_one_failing_section_fails_the_flow_and_stops_its_siblings() -> None:
    provider = ScriptedProvider({"outline": [GOOD_OUTLINE],
                                 "section": ["fine", LLMError("boom", code="llm_error")]})
    with pytest.raises(JobError) as caught:
        await run_flow(provider)
    assert caught.value.code == "llm_error"
    assert provider.calls["style"] == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("just prose", "no `sections:` list"),
        ("sections:\n  - Only one\n", "needs 2 to 8"),
        ("sections:\n" + "".join(f"  - T{i}\n" for i in range(9)), "needs 2 to 8"),
        ("sections:\n  - Same\n  - same\n", "repeats"),
        ("sections:\n  - ''\n  - Two\n", "non-empty"),
        ("sections:\n  - 5\n  - Two\n", "non-empty title"),
        ("sections: {a: 1}", "no `sections:` list"),
        ("!!python/object:os.system ls", "not valid YAML"),
    ],
)
def test_outline_validation_names_the_problem(text: str, reason: str) -> None:
    with pytest.raises(BadOutline, match=reason):
        parse_outline(text)


def test_outline_titles_are_trimmed() -> None:
    assert parse_outline("sections:\n  - '  Spaced   out  '\n  - Two\n") == ["Spaced out", "Two"]


def test_an_unexpected_exception_ends_the_job_without_leaking_its_text(serve_app) -> None:
    provider = ScriptedProvider({"outline": [RuntimeError("secret internals at 0xdeadbeef")]})
    served = serve_app(create_app(Settings(llm_provider="offline", rate_limit_per_minute=0,
                                           drain_s=1), provider=provider))
    events = read_stream(served.url, submit(served.url)["id"])
    assert events[-1].event == "error"
    assert events[-1].data == {"code": "internal_error",
                               "message": "The job failed with an unexpected internal error."}


async def test_call_llm_returns_the_whole_reply_for_callers_that_do_not_stream() -> None:
    provider = ScriptedProvider({"style": ["One reply, streamed in pieces."]})
    llm = LLM(provider, timeout_s=5, stream_attempts=1, max_calls=10)
    assert await call_llm(llm, style_prompt("Tea", "draft")) == "One reply, streamed in pieces."


async def test_a_resumed_flow_runs_only_what_is_left() -> None:
    provider = ScriptedProvider({"style": ["Styled."]})
    config = Settings(llm_provider="offline")
    queue: asyncio.Queue[Report] = asyncio.Queue()
    sections = ["Alpha", "Beta", "Gamma"]
    assert resume_stage(None, {}) == "outline"
    assert resume_stage(sections, {0: "Kept."}) == "content"
    assert resume_stage(sections, {0: "a", 1: "b", 2: "c"}) == "style"
    shared = new_shared("Home composting", queue, sections=sections, contents={0: "Kept."})
    await build_flow(LLM.from_settings(provider, config), config, start=Stage.content).run_async(shared)
    assert provider.calls == {"section": 2, "style": 1}
    assert "## Alpha\n\nKept." in shared["draft"]
    written = [queue.get_nowait() for _ in range(queue.qsize())]
    assert sorted(m.index for m in written if isinstance(m, SectionWritten)) == [1, 2]
    assert shared["final_article"] == "Styled."
