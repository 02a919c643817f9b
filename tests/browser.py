"""The demo page in a real browser: Debian's Chromium driven by Playwright, and what the page
tests share (launching it, submitting a topic, reading what the page shows)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB_TIMEOUT_MS = 20_000
UI_TIMEOUT_MS = 5_000

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")

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


@contextmanager
def launched() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def opened(browser: Browser, **context: Any) -> Iterator[Page]:
    """A page in a context of its own (`context` as `Browser.new_context` takes it), watched."""
    ctx = browser.new_context(**context)
    try:
        page = ctx.new_page()
        page.add_init_script(WATCH_SCRIPT)
        yield page
    finally:
        ctx.close()


def submit_topic(page: Page, topic: str) -> str:
    """Type `topic` into the open page and submit it; return the new job's id from the URL."""
    page.get_by_role("textbox", name="Topic").fill(topic)
    page.get_by_role("button", name="Write article").click()
    expect(page).to_have_url(re.compile(r"#job=j_[A-Za-z0-9_-]{22}$"), timeout=UI_TIMEOUT_MS)
    return page.url.split("#job=", 1)[1]


def wait_finished(page: Page, timeout_ms: int = JOB_TIMEOUT_MS) -> None:
    expect(page.locator("#stage")).to_have_text("Done", timeout=timeout_ms)




def words(text: str) -> str:
    """Text without Markdown's marks and without whitespace: what a Markdown source and its
    rendering have in common, in the same order (the article's marks become markup)."""
    return re.sub(r"[\s*_#`>=-]+", "", text)


def assert_article_shown(page: Page, markdown: str) -> None:
    """The article panel shows `markdown` rendered: its words, in order, and nothing else."""
    article = page.locator("#article")
    expect(article).to_be_visible(timeout=UI_TIMEOUT_MS)
    assert words(article.text_content() or "") == words(markdown)


def downloaded(page: Page) -> tuple[str, str]:
    """Follow the Download link; return the file's name and text."""
    with page.expect_download(timeout=UI_TIMEOUT_MS) as info:
        page.get_by_role("link", name="Download .md").click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_text(encoding="utf-8")
