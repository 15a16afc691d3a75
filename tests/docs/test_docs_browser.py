"""The generated HTML site in headless Chromium, offline: it renders, the diagram shows, links work."""

from __future__ import annotations

from pathlib import Path

import pytest
import sample_services
from browser_support import launch, sync_api_or_skip

from svcbus.docs import collect
from svcbus.docs.asyncapi import build_document
from svcbus.docs.html import render_site

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    system = collect(
        sample_services.SERVICES, routes=sample_services.routes, servers=["nats://localhost:4222"]
    )
    root = tmp_path_factory.mktemp("site")
    for path, text in render_site(system, build_document(system)).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root


def test_index_opens_offline_and_shows_the_diagram(site: Path) -> None:
    sync_api = sync_api_or_skip()
    blocked: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            # Offline: anything but the site's own files is refused (and recorded).
            def route(r) -> None:
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    blocked.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))  # an injected alert

            page.goto((site / "index.html").as_uri())
            diagram = page.locator("svg.svcbus-diagram")
            assert diagram.is_visible()
            box = diagram.bounding_box()
            assert box is not None and box["width"] > 400 and box["height"] > 150
            assert page.locator("svg.svcbus-diagram g.service").count() == 3
            assert page.locator("svg.svcbus-diagram g.channel").count() == 4
            assert page.locator("svg.svcbus-diagram path.edge").count() == 8
            # a service name is drawn as visible text inside the diagram
            assert page.locator("svg.svcbus-diagram text", has_text="stats").first.is_visible()

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs-index.png"), full_page=True)

            # the channel boxes link to their pages
            page.locator('svg.svcbus-diagram a[href="channels/docsample.posted.html"]').click()
            page.wait_for_url("**/channels/docsample.posted.html")
            assert page.locator("h2", has_text="docsample.posted").is_visible()
            # the injected <script> is text on the page, not a script
            assert page.get_by_text('<script>alert("x")</script>').first.is_visible()
            assert page.locator("main script").count() == 0
            assert page.locator("td code", has_text="author.name").is_visible()
            assert errors == []
        finally:
            browser.close()
    assert blocked == []
