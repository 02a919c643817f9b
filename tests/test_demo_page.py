"""The demo page in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
JOB_TIMEOUT_MS = 20_000
UI_TIMEOUT_MS = 5_000

# Installed before the page's own script: records what the page ever put on screen.
WATCH_SCRIPT = """
window.__imgs = 0;
window.__violations = [];
window.__texts = {};
document.addEventListener("securitypolicyviolation",
                          (e) => window.__violations.push(e.violatedDirective));
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType === 1 && (n.tagName === "IMG" || n.querySelector("img"))) window.__imgs += 1;
  }
  for (const el of document.querySelectorAll(".section-body, #article")) {
    const key = el.id || "section-" + el.closest(".section").dataset.index;
    const seen = (window.__texts[key] ||= []);
    if (el.textContent && seen[seen.length - 1] !== el.textContent) seen.push(el.textContent);
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.add_init_script(WATCH_SCRIPT)
    yield page
    context.close()


def submit_topic(page: Page, url: str, topic: str) -> str:
    """Type `topic` into the open page and submit it; return the new job's id from the URL."""
    page.get_by_role("textbox", name="Topic").fill(topic)
    page.get_by_role("button", name="Write article").click()
    expect(page).to_have_url(re.compile(r"#job=j_[A-Za-z0-9_-]{22}$"), timeout=UI_TIMEOUT_MS)
    return page.url.split("#job=", 1)[1]


def wait_finished(page: Page) -> None:
    expect(page.locator("#stage")).to_have_text("Done", timeout=JOB_TIMEOUT_MS)


def fetch_job(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/jobs/{job_id}", timeout=5)
    assert response.status_code == 200
    return response.json()


def section_events(url: str, job_id: str) -> dict[int, dict[str, Any]]:
    """The `section` events of a finished job, read from a fresh full replay of its stream."""
    sections: dict[int, dict[str, Any]] = {}
    event, data = "message", ""
    with httpx.stream("GET", f"{url}/api/jobs/{job_id}/events", timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                if event == "section":
                    payload = json.loads(data)
                    sections[payload["index"]] = payload
                event, data = "message", ""
    return sections


def assert_sections_once(page: Page, url: str, job_id: str) -> None:
    """Every section shows exactly once, in order, with exactly the text the server wrote."""
    expected = section_events(url, job_id)
    cards = page.locator("#sections .section")
    expect(cards).to_have_count(len(expected), timeout=UI_TIMEOUT_MS)
    indexes = cards.evaluate_all("cs => cs.map(c => c.dataset.index)")
    assert indexes == [str(i) for i in sorted(expected)]
    assert page.locator("#sections .section-title").all_text_contents() == [
        expected[i]["title"] for i in sorted(expected)
    ]
    assert page.locator("#sections .section-body").all_text_contents() == [
        expected[i]["content"] for i in sorted(expected)
    ]


def test_topic_becomes_finished_article(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, server.url, "Home composting")

    wait_finished(page)
    expect(page.locator("#progress")).to_have_js_property("value", 100, timeout=UI_TIMEOUT_MS)
    expect(page.locator("#progress-value")).to_have_text("100%")
    expect(page.locator("#job-topic")).to_have_text("Home composting")
    job = fetch_job(server.url, job_id)
    assert job["status"] == "succeeded"
    assert len(job["sections"]) == 3
    expect(page.locator("#outline li .outline-title")).to_have_text(job["sections"])
    assert_sections_once(page, server.url, job_id)
    article = page.locator("#article")
    expect(article).to_be_visible()
    assert article.text_content() == job["article"]
    expect(article).to_contain_text("offline writer")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()

    # The URL names the job, so a reload shows the same finished job again.
    page.reload()
    wait_finished(page)
    assert_sections_once(page, server.url, job_id)
    assert page.locator("#article").text_content() == job["article"]


def test_topic_markup_is_shown_as_text(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    topic = "<img src=x onerror=alert(1)>"
    page.goto(f"{server.url}/")
    submit_topic(page, server.url, topic)

    wait_finished(page)
    expect(page.locator("#job-topic")).to_have_text(topic)
    expect(page.get_by_text(topic, exact=True)).to_be_visible()
    # The offline writer puts the topic into titles and the article too: all of it stays text.
    expect(page.locator("#article")).to_contain_text(topic)
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__imgs") == 0
    assert dialogs == []


def test_cancel_shows_cancelled_state(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="2000")
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, server.url, "Slow topic")

    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#stage")).to_have_text(re.compile("outline"), timeout=UI_TIMEOUT_MS)
    cancel.click()

    expect(page.locator("#cancelled")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator("#cancelled")).to_contain_text("Cancelled")
    expect(cancel).to_be_hidden()
    expect(page.locator("#article-panel")).to_be_hidden()
    assert fetch_job(server.url, job_id)["status"] == "cancelled"


def test_failed_job_shows_its_error(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="2000", JOB_TIMEOUT_SECONDS="0.5")
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, server.url, "Too slow")

    error = page.locator("#error")
    expect(error).to_be_visible(timeout=JOB_TIMEOUT_MS)
    job = fetch_job(server.url, job_id)
    assert job["status"] == "failed"
    expect(page.locator("#error-code")).to_have_text(job["error"]["code"])
    expect(page.locator("#error-message")).to_have_text(job["error"]["message"])
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()


def dropped_stream(events_url: str, *, after_deltas: int) -> bytes:
    """The start of a job's real event stream as a dropped connection leaves it.

    It runs until `after_deltas` content deltas have gone by and ends halfway through
    the next event, which a client must then discard.
    """
    body, deltas = b"", 0
    with httpx.stream("GET", events_url, timeout=JOB_TIMEOUT_MS / 1000) as response:
        assert response.status_code == 200
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                frame += b"\n\n"
                fields: dict[str, str] = {}
                for line in frame.decode().splitlines():
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                if "id" in fields and deltas >= after_deltas:
                    return body + frame[: len(frame) // 2]
                body += frame
                is_delta = fields.get("event") == "delta"
                if is_delta and json.loads(fields["data"])["stage"] == "content":
                    deltas += 1
    raise AssertionError("the stream ended before it could be cut")


def test_reconnect_after_network_drop_loses_and_repeats_nothing(
    start_server: Callable[..., Any], page: Page
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="1500")
    stream_count = [0]

    def drop_first_stream(route: Route) -> None:
        stream_count[0] += 1
        if stream_count[0] > 1:
            route.continue_()
            return
        body = dropped_stream(route.request.url, after_deltas=4)
        route.fulfill(status=200, content_type="text/event-stream; charset=utf-8", body=body)

    page.route(re.compile(r"/api/jobs/[^/]+/events"), drop_first_stream)
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, server.url, "Network drops")

    expect(page.locator("#connection")).to_have_text("reconnecting…", timeout=JOB_TIMEOUT_MS)
    wait_finished(page)
    # EventSource reopened the stream by itself (it sends Last-Event-ID; Playwright does not
    # show that header, so the proof is in the page's texts below).
    assert stream_count == [2]

    job = fetch_job(server.url, job_id)
    assert_sections_once(page, server.url, job_id)
    assert page.locator("#article").text_content() == job["article"]
    # No delta applied twice or lost: every text the page ever showed grew toward the final one.
    finals = {f"section-{i}": s["content"] for i, s in section_events(server.url, job_id).items()}
    finals["article"] = job["article"]
    shown: dict[str, list[str]] = page.evaluate("window.__texts")
    assert set(shown) == set(finals)
    for key, texts in shown.items():
        assert all(finals[key].startswith(text) for text in texts), key
        assert texts[-1] == finals[key]


def test_ended_job_shows_from_its_snapshot_when_streams_keep_being_refused(
    start_server: Callable[..., Any], page: Page
) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    refused = [0]

    def refuse(route: Route) -> None:
        refused[0] += 1
        route.fulfill(status=503, content_type="application/json",
                      body='{"error": {"code": "unavailable", "message": "Not now."}}')

    page.route(re.compile(r"/api/jobs/[^/]+/events"), refuse)
    page.goto(f"{server.url}/")
    job_id = submit_topic(page, server.url, "Refused streams")

    # The page asks for the job after each refusal and tries the stream again; only the third
    # refusal in a row of a job that has ended lets the snapshot stand in for the rest.
    wait_finished(page)
    assert refused == [3]
    job = fetch_job(server.url, job_id)
    assert page.locator("#article").text_content() == job["article"]
    expect(page.locator("#outline li .outline-title")).to_have_text(job["sections"])


def test_security_headers_and_clean_console(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))

    response = page.goto(f"{server.url}/")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    submit_topic(page, server.url, "Tidy consoles")
    wait_finished(page)

    assert page.evaluate("window.__violations") == []
    assert problems == []
