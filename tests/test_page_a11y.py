"""The demo page is usable by everyone: axe-core, the keyboard alone, announcements, reduced
motion and a narrow screen, in real Chromium."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from .browser import (
    UI_TIMEOUT_MS,
    assert_article_shown,
    needs_chromium,
    opened,
    submit_topic,
    wait_finished,
)
from .sse_client import get_job

pytestmark = needs_chromium

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.length}));
}"""
# What the focused element looks like: focus-visible, and a ring of outline or shadow.
FOCUS_RING = """el => {
  const s = getComputedStyle(el);
  const outline = s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2;
  return el.matches(":focus-visible") && (outline || s.boxShadow !== "none");
}"""
# Every element's (and its ::before/::after's) longest transition and any animation.
MOTION = """() => {
  const moving = [];
  for (const el of document.querySelectorAll("*")) for (const pseudo of [null, "::before", "::after"]) {
    const s = getComputedStyle(el, pseudo);
    const longest = Math.max(...s.transitionDuration.split(",").map(parseFloat));
    if (longest > 0 || s.animationName !== "none") moving.push(el.id || el.className || el.tagName);
  }
  return moving;
}"""
MAX_TABS = 25


def serious(page: Page) -> list[dict[str, Any]]:
    violations: list[dict[str, Any]] = page.evaluate(RUN_AXE)
    return [v for v in violations if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_serious(start_server: Callable[..., Any], browser: Browser, scheme: str) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="800")
    with opened(browser, color_scheme=scheme) as page:
        page.add_init_script(path=str(AXE))
        page.goto(f"{server.url}/")
        expect(page.locator("#recent-empty")).to_be_visible()
        assert serious(page) == [], "empty page"

        submit_topic(page, "Home composting")
        expect(page.locator("#sections .section").first).to_be_visible(timeout=UI_TIMEOUT_MS * 3)
        assert serious(page) == [], "running job"

        wait_finished(page)
        expect(page.get_by_role("button", name="Copy Markdown")).to_be_visible()
        assert serious(page) == [], "finished job"
        assert page.evaluate("window.__violations") == []


def tab_to(page: Page, target: Locator, *, backwards: bool = False) -> None:
    """Press Tab (or Shift+Tab) until `target` has the focus, and check its focus ring."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(MAX_TABS):
        if target.evaluate("el => el === document.activeElement"):
            break
        page.keyboard.press(key)
    expect(target).to_be_focused()
    assert target.evaluate(FOCUS_RING), "no visible focus ring"


def test_whole_flow_with_the_keyboard_alone(start_server: Callable[..., Any], browser: Browser) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="1500")
    response = httpx.post(f"{server.url}/api/jobs", json={"topic": "Done before"},
                          headers={"Prefer": "wait=40"}, timeout=45)
    assert response.status_code == 201
    finished = response.json()
    with opened(browser) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        page.goto(f"{server.url}/")
        expect(page.get_by_role("link", name="Done before")).to_be_visible()

        tab_to(page, page.get_by_role("textbox", name="Topic"))
        page.keyboard.type("Typed by keys")
        tab_to(page, page.get_by_role("button", name="Write article"))
        page.keyboard.press("Enter")
        cancel = page.get_by_role("button", name="Cancel")
        expect(cancel).to_be_visible()
        tab_to(page, cancel)
        page.keyboard.press("Enter")
        expect(page.locator("#cancelled")).to_be_visible()
        expect(page.locator("#cancelled")).to_be_focused()  # the keyboard is not lost

        done_before = page.get_by_role("link", name="Done before")
        tab_to(page, done_before)
        page.keyboard.press("Enter")
        wait_finished(page)
        assert_article_shown(page, finished["article"])

        copy = page.get_by_role("button", name="Copy Markdown")
        tab_to(page, copy, backwards=True)
        page.keyboard.press("Enter")
        expect(page.locator("#copy-status")).to_have_text("Copied the article's Markdown.")
        assert page.evaluate("navigator.clipboard.readText()") == finished["article"]


def test_progress_and_completion_are_announced(start_server: Callable[..., Any], page: Page) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="300")
    page.add_init_script("""
        window.__said = [];
        new MutationObserver(() => {
          const text = document.querySelector('[role="status"][aria-live="polite"]')?.textContent;
          if (text && window.__said.at(-1) !== text) window.__said.push(text);
        }).observe(document, {childList: true, subtree: true, characterData: true});
    """)
    page.goto(f"{server.url}/")
    submit_topic(page, "Spoken")
    wait_finished(page)

    progress = page.get_by_role("progressbar", name="Progress")
    expect(progress).to_have_attribute("max", "100")
    expect(progress).to_have_js_property("value", 100)
    expect(page.get_by_role("status").filter(has_text="Done")).to_have_text("Done: the article is ready.")
    said: list[str] = page.evaluate("window.__said")
    assert "Writing sections: 3 of 3 written." in said
    assert said[-1] == "Done: the article is ready."


def test_nothing_moves_with_reduced_motion(start_server: Callable[..., Any], browser: Browser) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    for motion, expect_moving in (("no-preference", True), ("reduce", False)):
        with opened(browser, reduced_motion=motion) as page:
            page.goto(f"{server.url}/")
            submit_topic(page, f"Motion {motion}")
            wait_finished(page)
            moving = page.evaluate(MOTION)
            # Without the preference the buttons do ease, so the check can see motion.
            assert bool(moving) is expect_moving, (motion, moving)


def test_nothing_scrolls_sideways_at_390_px(start_server: Callable[..., Any], browser: Browser) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="50")
    width = "document.documentElement.scrollWidth"
    with opened(browser, viewport={"width": 390, "height": 800}) as page:
        page.goto(f"{server.url}/")
        assert page.evaluate(width) <= 390
        job_id = submit_topic(page, "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3)
        wait_finished(page)
        assert_article_shown(page, get_job(server.url, job_id)["article"])
        assert page.evaluate(width) <= 390
