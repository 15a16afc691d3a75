"""The demo page in headless Chromium: two pages chat, a third in another room sees nothing.

The page runs against ``svc demo`` in a subprocess, offline (any request that
is not to the demo is refused and recorded). Bad input from the page is
rejected or shown as text, never run. A screenshot goes to
``test-artifacts/demo.png``; with ``SVCBUS_UPDATE_SCREENSHOT=1`` it also
replaces ``docs/images/demo.png`` (the README's picture).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import launch, sync_api_or_skip
from example_support import ROOT, Processes, read_url

pytestmark = pytest.mark.browser

ARTIFACT = ROOT / "test-artifacts" / "demo.png"
README_IMAGE = ROOT / "docs" / "images" / "demo.png"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def sync_api() -> Any:
    return sync_api_or_skip()


@pytest.fixture
def demo_url(processes: Processes) -> str:
    return read_url(processes.start("demo", "demo", "--port", "0"))


class Browser:
    """Pages on one Chromium, each an isolated user, all kept offline."""

    def __init__(self, browser: Any, base: str) -> None:
        self.browser = browser
        self.base = base
        self.blocked: list[str] = []
        self.problems: list[str] = []

    def page(self, path: str = "") -> Any:
        context = self.browser.new_context(viewport={"width": 1000, "height": 640})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.route("**/*", self._only_the_demo)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("dialog", lambda d: self.problems.append(f"dialog: {d.message}"))
        page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.goto(self.base + path)
        return page

    def _only_the_demo(self, route: Any) -> None:
        if route.request.url.startswith(self.base):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


@pytest.fixture
def browser(sync_api: Any, demo_url: str) -> Iterator[Browser]:
    with sync_api.sync_playwright() as pw:
        chromium = launch(pw)
        try:
            yield Browser(chromium, demo_url)
        finally:
            chromium.close()


def joined(page: Any, expect: Any) -> None:
    """Wait until the page's socket is open and the welcome has arrived."""
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator("#join")).to_be_hidden()
    expect(page.locator("#messages li.system", has_text="You joined")).to_have_count(1)


def post(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def texts(page: Any) -> list[str]:
    return page.locator("#messages li.message .text").all_text_contents()


def test_two_pages_chat_a_third_sees_nothing_and_bad_input_is_harmless(
    browser: Browser, sync_api: Any
) -> None:
    expect = sync_api.expect

    # ada joins with the form; bob and eve with links
    ada = browser.page()
    ada.fill("#room", "lobby")
    ada.fill("#nick", "ada")
    ada.click("#join button")
    joined(ada, expect)
    bob = browser.page("?room=lobby&nick=bob")
    joined(bob, expect)
    eve = browser.page("?room=elsewhere&nick=eve")
    joined(eve, expect)
    expect(ada.locator("#users li")).to_have_text(["ada", "bob"])

    conversation = [
        (ada, "Hi Bob! The edge turns this socket into chat.receive messages."),
        (bob, "And the stats service counts them on the other side of the bus."),
        (ada, "Both services could run on NATS or Redis instead."),
    ]
    for n, (page, text) in enumerate(conversation, 1):
        post(page, text)
        for reader in (ada, bob):
            expect(reader.locator("#messages li.message")).to_have_count(n)
    assert texts(bob) == [t for _, t in conversation]
    for page in (ada, bob):
        expect(page.locator("#stat-messages")).to_have_text("3")
        expect(page.locator("#stat-users")).to_have_text("2")
        expect(page.locator("#stat-rate")).to_have_text("3")
    screenshot(ada)

    # HTML and scripts are text: shown as typed, never run
    attacks = [
        "<script>window.__pwned = 1</script>",
        '<img src=x onerror="window.__pwned = 2">',
    ]
    for attack in attacks:
        post(ada, attack)
    expect(bob.locator("#messages li.message")).to_have_count(5)
    assert texts(bob)[-2:] == attacks
    for page in (ada, bob, eve):
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("#messages script, #messages img").count() == 0

    # bad input: rejected with an error for the sender only, and nothing is lost
    bad = [
        ("", None, "the message is empty"),
        ("   ", None, "the message is empty"),
        (None, "demoChat.socket.send('{not json')", "not JSON"),
        (None, "demoChat.socket.send(JSON.stringify({text: 'x'.repeat(600)}))", "longer than 500"),
        (None, "demoChat.socket.send(JSON.stringify({html: '<b>hi</b>'}))", "unexpected field"),
    ]
    for typed, script, error in bad:
        if script is None:
            post(ada, typed)
        else:
            ada.evaluate(script)
        expect(ada.locator("#error")).to_contain_text(error)
        ada.evaluate("document.getElementById('error').textContent = ''")
    expect(bob.locator("#error")).to_be_hidden()
    post(bob, "Still here after all that?")
    expect(ada.locator("#messages li.message")).to_have_count(6)
    assert texts(ada) == texts(bob)
    assert texts(ada)[-1] == "Still here after all that?"
    expect(ada.locator("#status")).to_have_text("connected")
    expect(bob.locator("#stat-messages")).to_have_text("6")

    # eve, in another room, saw none of it
    assert eve.locator("#messages li.message").count() == 0
    expect(eve.locator("#stat-messages")).to_have_text("0")
    expect(eve.locator("#users li")).to_have_text(["eve"])

    # bob leaves: ada sees it, in the list and the stats
    bob.click("#leave")
    expect(ada.locator("#messages li.system", has_text="bob left.")).to_have_count(1)
    expect(ada.locator("#stat-users")).to_have_text("1")

    # a newcomer gets the history; a nickname is text too
    nick = "<i>cy</i>"
    cy = browser.page("?room=lobby&nick=%3Ci%3Ecy%3C%2Fi%3E")
    joined(cy, expect)
    assert texts(cy) == texts(ada)
    expect(ada.locator("#users li")).to_have_text(["<i>cy</i>", "ada"])
    post(cy, "hello")
    expect(ada.locator("#messages li.message .nick").last).to_have_text(nick)
    assert ada.locator("#messages i, #users i").count() == 0

    assert browser.problems == []
    assert browser.blocked == []


def screenshot(page: Any) -> None:
    """Save the page for humans; refresh the README's copy only when asked."""
    ARTIFACT.parent.mkdir(exist_ok=True)
    page.locator("#text").blur()
    page.screenshot(path=str(ARTIFACT))
    if os.environ.get("SVCBUS_UPDATE_SCREENSHOT") == "1":
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACT, README_IMAGE)
