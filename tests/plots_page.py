"""DVC's plots page rendered as a user's browser renders it, offline: Chromium
(through Playwright) loads the page `dvc plots show` or `dvc plots diff`
wrote, and the vega libraries it asks the CDN for come from npm
(tests/vega, installed by .ci/run) at the versions it names."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO_ROOT

VEGA_PACKAGES = REPO_ROOT / "tests" / "vega" / "node_modules"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# Appended to vega-embed as served: each chart's embedding is kept, so that
# the test reads what vega drew (its SVG) instead of the page's canvas pixels.
KEEP_CHARTS = (
    ";(() => { const embed = window.vegaEmbed; window.charts = [];"
    " window.vegaEmbed = (...args) => { const shown = embed(...args); window.charts.push(shown); return shown; }; })();"
)


@dataclass(frozen=True)
class Chart:
    titles: list[str]  # the chart's, and a faceted chart's header
    axis_titles: list[str]
    texts: list[str]  # every text the chart shows: axis labels, legend entries, facet headers


@dataclass(frozen=True)
class RenderedPage:
    charts: list[Chart]
    images: list[str]  # the src of each <img>
    errors: list[str]  # the console's errors and uncaught exceptions


def serve_from_npm(route) -> None:
    name = re.match(r"https://cdn\.jsdelivr\.net/npm/([a-z-]+)@", route.request.url).group(1)
    package = VEGA_PACKAGES / name
    body = (package / json.loads((package / "package.json").read_text())["jsdelivr"]).read_bytes()
    if name == "vega-embed":
        body += KEEP_CHARTS.encode()
    route.fulfill(body=body, content_type="application/javascript")


def chart_of(svg: str) -> Chart:
    texts = re.findall(r">([^<>]+)</text>", svg)
    titles = re.findall(r"role-title-text[^>]*>(?:<[^>]*>)*([^<]+)", svg)
    axes = re.findall(r'class="[^"]*role-axis-title[^"]*".*?<text[^>]*>([^<]*)</text>', svg)
    return Chart(titles, axes, texts)


def render(page_file: Path, screenshot: Path) -> RenderedPage:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route("https://cdn.jsdelivr.net/npm/**", serve_from_npm)
            page.goto(page_file.resolve().as_uri())
            svgs = page.evaluate("Promise.all(window.charts).then(cs => Promise.all(cs.map(c => c.view.toSVG())))")
            images = page.eval_on_selector_all("img", "images => images.map(image => image.getAttribute('src'))")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return RenderedPage([chart_of(svg) for svg in svgs], images, errors)
