"""Open a page in headless Chromium (Debian's chromium + chromium-driver) and check it: every
image loads, the console stays clean, no text is clipped, every heatmap has a colour bar,
and the content fills the window."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class PageCheck:
    images: int
    broken: list[str]
    console_errors: list[str]
    title: str
    clipped: list[str] = field(default_factory=list)  # text elements whose text overflows
    heatmaps: int = 0
    heatmaps_without_bar: list[str] = field(default_factory=list)
    horizontal_scroll: bool = False
    used_width: float = 0.0  # rightmost edge of the content / window width
    smallest_map: float = 0.0  # narrowest map of a method panel (css px), 0 without any
    panels: list[dict[str, Any]] = field(default_factory=list)  # per .method panel


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


requires_chromium = pytest.mark.skipif(
    not chromium_available(),
    reason="Debian chromium/chromium-driver not installed (make system-deps)",
)

# Text elements: those with a text node of their own, laid out as boxes (inline boxes have no
# scroll width of their own; their block parent is checked instead).
_CLIPPED = """
const out = [];
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') || el.closest('#lightbox') || el.tagName === 'SCRIPT' || el.tagName === 'STYLE') continue;
  const style = getComputedStyle(el);
  if (style.display === 'inline' || style.display === 'none' || style.visibility === 'hidden') continue;
  const own = Array.from(el.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own && !el.querySelector(':scope > b, :scope > span, :scope > code, :scope > i')) continue;
  if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1 && style.overflowY !== 'visible')
    out.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ': ' + el.textContent.trim().slice(0, 60));
}
return out;
"""

_HEATMAPS = """
const maps = Array.from(document.querySelectorAll('img.heatmap'));
const missing = maps.filter(img => {
  const scope = img.closest('.scaled');
  return !(scope && scope.querySelector('.colorbar .bar') && scope.querySelectorAll('.colorbar .scale span').length >= 2);
}).map(img => img.alt);
const widths = Array.from(document.querySelectorAll('.method img.heatmap')).map(img => img.getBoundingClientRect().width).filter(w => w > 0);
return [maps.length, missing, widths.length ? Math.min(...widths) : 0];
"""

_PANELS = """
return Array.from(document.querySelectorAll('.method')).map(p => {
  const options = {};
  for (const a of p.attributes) if (a.name.startsWith('data-option-')) options[a.name.slice(12)] = a.value;
  const r = p.getBoundingClientRect();
  const settings = p.querySelector('.settings');
  return {method: p.dataset.method, options: options, width: r.width, height: r.height,
          settings: settings ? settings.textContent : '', text: p.textContent};
});
"""


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with the browser console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="cnnlens-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """SEVERE browser console entries since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def check_page(path: Path, screenshot: Path | None = None, *, width: int = 1280) -> PageCheck:
    """Open ``path`` in a window ``width`` css px wide, check it, and (optionally) save a
    full-page screenshot."""
    with chromium(width) as driver:
        driver.get(path.resolve().as_uri())
        driver.execute_script("return document.readyState")
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 60));"
        )
        count = driver.execute_script("return document.images.length;")
        clipped = driver.execute_script(_CLIPPED)
        heatmaps, missing, smallest = driver.execute_script(_HEATMAPS)
        panels = driver.execute_script(_PANELS)
        scroll = driver.execute_script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth;"
        )
        used = driver.execute_script(
            "const r = Array.from(document.querySelectorAll('main .card')).map(c => c.getBoundingClientRect().right);"
            "return r.length ? Math.max(...r) / document.documentElement.clientWidth : 1;"
        )
        errors = console_errors(driver)
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(width, min(int(height) + 40, 16000))
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
        return PageCheck(
            int(count),
            list(broken),
            errors,
            driver.title,
            list(clipped),
            int(heatmaps),
            list(missing),
            bool(scroll),
            float(used),
            float(smallest),
            list(panels),
        )
