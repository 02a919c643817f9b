"""The demo page's article, recent jobs, usage and access token, in real Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from .browser import (
    JOB_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    assert_article_shown,
    downloaded,
    needs_chromium,
    opened,
    submit_topic,
    wait_finished,
)
from .sse_client import get_job

pytestmark = needs_chromium

# Each would run `window.__xss = 1` if the page let it: as an element, a handler or a link.
HOSTILE_TOPICS = [
    "<img src=x onerror=window.__xss=1>",
    "<script>window.__xss=1</script>",
    "[click me](javascript:window.__xss=1)",
]
SCREENSHOTS = {"light": Path("/tmp/page-light.png"), "dark": Path("/tmp/page-dark.png")}


def submitted(url: str, topic: str, *, wait_s: int = 0, token: str | None = None) -> dict[str, Any]:
    """A job submitted over HTTP (finished first when `wait_s` is set)."""
    headers = {"Prefer": f"wait={wait_s}"} if wait_s else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.post(f"{url}/api/jobs", json={"topic": topic}, headers=headers, timeout=wait_s + 5)
    assert response.status_code in (201, 202)
    job: dict[str, Any] = response.json()
    return job


@pytest.mark.parametrize("topic", HOSTILE_TOPICS)
def test_hostile_topic_runs_no_script(start_server: Callable[..., Any], page: Page, topic: str) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, topic)

    wait_finished(page)
    job = get_job(server.url, job_id)
    assert_article_shown(page, job["article"])
    # The offline writer puts the topic into the article's Markdown: it shows as text.
    expect(page.locator("#article h3")).to_have_text(topic)
    expect(page.locator("#article")).to_contain_text(topic.lower())
    # Let any click through: a javascript: link would run now.
    for link in page.locator("#article a").all():
        link.click(modifiers=["Alt"])  # Alt: follow without leaving the page
    assert page.evaluate("window.__xss") is None
    assert page.locator("img, script:not([src])").count() == 0
    assert page.evaluate("window.__imgs") == 0
    assert page.locator('a[href^="javascript:" i]').count() == 0
    assert page.evaluate("window.__violations") == []
    assert dialogs == []


def test_only_web_and_mail_links_become_links(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    page.goto(f"{server.url}/")
    submit_topic(page, "[docs](https://example.com/a) [mail](mailto:a@example.com) [rel](/static/app.js)")
    wait_finished(page)

    heading = page.locator("#article h3")
    links = heading.locator("a")
    expect(links).to_have_count(2)
    assert links.evaluate_all("ls => ls.map(l => [l.getAttribute('href'), l.rel, l.target])") == [
        ["https://example.com/a", "noopener noreferrer", "_blank"],
        ["mailto:a@example.com", "noopener noreferrer", "_blank"],
    ]
    expect(heading).to_contain_text("[rel](/static/app.js)")


def test_copy_and_download_take_the_exact_markdown(
    start_server: Callable[..., Any], browser: Browser
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    with opened(browser) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page.goto(f"{server.url}/")
        job_id = submit_topic(page, "Café crème: a guide!")
        copy = page.get_by_role("button", name="Copy Markdown")
        # Neither is offered before the article is final.
        expect(copy).to_be_hidden()
        wait_finished(page)
        job = get_job(server.url, job_id)

        copy.click()
        expect(page.locator("#copy-status")).to_have_text("Copied the article's Markdown.")
        assert page.evaluate("navigator.clipboard.readText()") == job["article"]
        assert downloaded(page) == ("cafe-creme-a-guide.md", job["article"])


def test_recent_jobs_open_articles_and_join_running_jobs(
    start_server: Callable[..., Any], page: Page
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="600")
    finished = submitted(server.url, "Finished first", wait_s=30)
    assert finished["status"] == "succeeded"
    running = submitted(server.url, "Still running")

    page.goto(f"{server.url}/")
    items = page.locator("#recent .recent-item")
    expect(items).to_have_count(2, timeout=UI_TIMEOUT_MS)
    expect(items.locator(".recent-topic")).to_have_text(["Still running", "Finished first"])
    expect(items.nth(1).locator(".status")).to_have_text("succeeded")
    expect(items.nth(0).locator(".status")).to_have_text(re.compile("queued|running"))
    expect(items.nth(1).locator("time")).to_have_attribute("datetime", finished["created_at"])
    expect(items.nth(1).locator("time")).to_have_text(re.compile(r"now|second|minute"))

    # A finished job opens with its article.
    page.get_by_role("link", name="Finished first").click()
    wait_finished(page)
    assert_article_shown(page, finished["article"])
    expect(page.get_by_role("link", name="Finished first")).to_have_attribute("aria-current", "true")

    # A running one is joined where it is, and followed to its end.
    page.get_by_role("link", name="Still running").click()
    expect(page.locator("#job-topic")).to_have_text("Still running")
    wait_finished(page, JOB_TIMEOUT_MS)
    assert_article_shown(page, get_job(server.url, running["id"])["article"])
    expect(items.nth(0).locator(".status")).to_have_text("succeeded")

    # The list is the server's, so a reload keeps it.
    page.goto(f"{server.url}/")
    expect(items.locator(".recent-topic")).to_have_text(["Still running", "Finished first"])


def test_ids_that_name_their_machine_open_from_the_url_and_the_list(
    start_server: Callable[..., Any], page: Page
) -> None:
    # On Fly without Redis (FLY_MACHINE_ID set) an id is j_<machine>.<22 characters>.
    server = start_server(OFFLINE_LLM_DELAY_MS="50", FLY_MACHINE_ID="148e21ea7e4389")
    job = submitted(server.url, "On a machine", wait_s=10)
    assert job["id"].startswith("j_148e21ea7e4389.")

    page.goto(f"{server.url}/#job={job['id']}")
    wait_finished(page)
    assert_article_shown(page, job["article"])

    page.goto(f"{server.url}/")
    page.get_by_role("link", name="On a machine").click()
    expect(page).to_have_url(f"{server.url}/#job={job['id']}")
    wait_finished(page)
    expect(page.locator("#job-id")).to_have_text(job["id"])


def test_token_is_asked_for_once_and_kept_for_the_session(
    start_server: Callable[..., Any], page: Page
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50", API_TOKENS="t-one,t-two")
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.count("/events") else None)
    page.goto(f"{server.url}/")

    token = page.get_by_label("Token", exact=True)
    expect(token).to_be_focused(timeout=UI_TIMEOUT_MS)
    token.fill("wrong")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert").filter(has_text="That token was refused")).to_be_visible()
    token.fill("t-two")
    page.keyboard.press("Enter")
    expect(page.locator("#token-panel")).to_be_hidden()
    expect(page.locator("#recent-empty")).to_be_visible()

    job_id = submit_topic(page, "Guarded")
    wait_finished(page)
    assert_article_shown(page, get_job(server.url, job_id, token="t-two")["article"])
    assert streams and all("token=t-two" in url for url in streams)

    # Kept for the tab: a reload asks for nothing and shows the job and the list.
    page.reload()
    wait_finished(page)
    expect(page.locator("#token-panel")).to_be_hidden()
    expect(page.get_by_role("link", name="Guarded")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('articlestream.token')") == "t-two"


def test_usage_shows_the_offline_writers_real_numbers(
    start_server: Callable[..., Any], page: Page
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="300")
    probe = submitted(server.url, "Probe")
    if "usage" not in probe:
        pytest.skip("the server's job has no usage field (the usage branch is not merged)")
    page.add_init_script("""
        window.__usage = [];
        new MutationObserver(() => {
          const text = document.getElementById("usage")?.textContent;
          if (text && window.__usage.at(-1) !== text) window.__usage.push(text);
        }).observe(document, {childList: true, subtree: true, characterData: true});
    """)
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, "Counted")
    wait_finished(page)

    usage = get_job(server.url, job_id)["usage"]
    assert usage["llm_calls"] > 0
    assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (0, 0, 0)
    expect(page.locator("#usage")).to_have_text(
        f"{usage['llm_calls']} LLM calls · 0 tokens (0 in, 0 out) · cost $0.00"
    )
    # As it grew, the number of calls shown never went down.
    calls = [int(text.split(" ", 1)[0]) for text in page.evaluate("window.__usage")]
    assert calls == sorted(calls) and calls[-1] == usage["llm_calls"]
    expect(page.get_by_role("link", name="Counted").locator("xpath=..").locator(".recent-cost")).to_have_text(
        "$0.00"
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot_of_the_finished_page(
    start_server: Callable[..., Any], browser: Browser, scheme: str
) -> None:
    """Writes /tmp/page-{scheme}.png for people to look at; checks only that it was written."""
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    with opened(browser, color_scheme=scheme, viewport={"width": 1000, "height": 900}) as page:
        page.goto(f"{server.url}/")
        submit_topic(page, "Home composting")
        wait_finished(page)
        expect(page.get_by_role("button", name="Copy Markdown")).to_be_visible()
        # The progress bar eases to 100 %: the picture shows the page once it has settled.
        page.evaluate("Promise.all(document.getAnimations().map((a) => a.finished))")
        page.screenshot(path=str(SCREENSHOTS[scheme]), full_page=True)
    assert SCREENSHOTS[scheme].stat().st_size > 10_000
