"""The explorer end to end in headless Chromium: a real uvicorn server on a free loopback
port, the page driven as a person would (preselected sample, another sample, methods,
class, layer, upload)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import cnnlens

from .browser import chromium, console_errors, requires_chromium
from .serve_support import running_server, tiny_model

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

SCREENSHOT_TO = os.environ.get("CNNLENS_SERVE_SCREENSHOT")  # look at the page by hand

pytestmark = [pytest.mark.browser, requires_chromium]

LOADED = "return Array.from(document.images).filter(i => !i.hidden && i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).map(i => i.alt);"


def until(driver: Any, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda _d: condition(), message=what
    )


def map_state(driver: Any, method: str) -> dict[str, Any] | None:
    """The panel's map: src, whether it loaded, and the target and layer it shows."""
    result: dict[str, Any] | None = driver.execute_script(
        """
        const img = document.querySelector(`.panel[data-method="${arguments[0]}"] img.map`);
        if (!img || !img.getAttribute('src')) return null;
        return {src: img.src, loaded: img.complete && img.naturalWidth > 0,
                target: img.dataset.target, layer: img.dataset.layer,
                curves: !!img.closest('.panel').querySelector('.curves svg')};
        """,
        method,
    )
    return result


def wait_map(
    driver: Any, method: str, previous: str | None = None, **expect: str
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        state = map_state(driver, method)
        if state is None or not state["loaded"] or state["src"] == previous:
            return None
        if any(state.get(k) != v for k, v in expect.items()):
            return None
        return state

    return until(driver, ready, f"{method} map ({expect}) did not load")  # type: ignore[no-any-return]


def test_explorer_in_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from cnnlens.serve import create_app

    with running_server(create_app(tiny_model())) as url, chromium(1400, 1800) as driver:
        driver.get(url + "/")
        until(driver, lambda: driver.execute_script("return document.body.dataset.ready"), "init")

        # On first open the first sample (the cat) is chosen: the picture, the top-5, and the
        # two default methods' maps with curves, without touching anything.
        sample = Select(driver.find_element(By.ID, "sample"))
        assert sample.first_selected_option.get_attribute("value") == "cat"
        until(
            driver,
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#top tbody tr")) == 5,
            "top-5",
        )
        gradcam = wait_map(driver, "gradcam")
        saliency = wait_map(driver, "saliency")
        until(driver, lambda: map_state(driver, "gradcam")["curves"], "gradcam curves")
        assert driver.find_element(By.ID, "picture").is_displayed()
        until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#grid figure"), "grid")

        # Choosing another sample, then the cat again, changes the maps each time.
        first_picture = driver.find_element(By.ID, "picture").get_attribute("src")
        sample.select_by_value("coffee")
        until(
            driver,
            lambda: driver.find_element(By.ID, "picture").get_attribute("src") != first_picture,
            "coffee picture",
        )
        gradcam = wait_map(driver, "gradcam", gradcam["src"])
        saliency = wait_map(driver, "saliency", saliency["src"])
        sample.select_by_value("cat")
        until(
            driver,
            lambda: driver.find_element(By.ID, "picture").get_attribute("src") == first_picture,
            "cat picture again",
        )
        gradcam = wait_map(driver, "gradcam", gradcam["src"])
        saliency = wait_map(driver, "saliency", saliency["src"])
        until(driver, lambda: map_state(driver, "gradcam")["curves"], "gradcam curves")

        # Switch methods: add guided backprop, drop saliency.
        driver.find_element(By.CSS_SELECTOR, '#methods input[value="guided_backprop"]').click()
        wait_map(driver, "guided_backprop")
        driver.find_element(By.CSS_SELECTOR, '#methods input[value="saliency"]').click()
        until(driver, lambda: map_state(driver, "saliency") is None, "saliency panel removed")
        assert saliency["src"].startswith("data:image/png")

        # Switch class by name (completion list filled from the server) and by the top-5 table.
        box = driver.find_element(By.ID, "target")
        box.send_keys("coffee")
        until(
            driver,
            lambda: (
                "coffee mug"
                in driver.execute_script(
                    "return Array.from(document.querySelectorAll('#class-list option')).map(o => o.value)"
                )
            ),
            "completion",
        )
        box.clear()
        box.send_keys("coffee mug")
        driver.execute_script(
            "document.getElementById('target').dispatchEvent(new Event('change'))"
        )
        gradcam = wait_map(driver, "gradcam", gradcam["src"], target="3")
        driver.find_elements(By.CSS_SELECTOR, "#top tbody tr")[1].click()
        second = driver.find_elements(By.CSS_SELECTOR, "#top tbody tr")[1].get_attribute(
            "data-label"
        )
        assert driver.find_element(By.ID, "target").get_attribute("value") == second

        # Switch layer: Grad-CAM at an earlier feature map.
        Select(driver.find_element(By.ID, "layer")).select_by_value("features.1")
        gradcam = wait_map(driver, "gradcam", gradcam["src"], layer="features.1")

        # Opacity applies to every overlay.
        driver.execute_script(
            "const s = document.getElementById('opacity'); s.value = 25; s.dispatchEvent(new Event('input'));"
        )
        assert (
            driver.execute_script("return document.querySelector('.panel img.map').style.opacity")
            == "0.25"
        )

        # Look inside: the activation grid, a channel's map, its weights.
        until(
            driver, lambda: len(driver.find_elements(By.CSS_SELECTOR, "#grid figure")) > 0, "grid"
        )
        # It opens on the report's default layer and on the channel the server chose (one
        # whose map varies), with a legible weights picture.
        assert driver.find_element(By.ID, "inside-layer").get_attribute("value") == "features.4"
        until(
            driver,
            lambda: driver.execute_script(
                "const w = document.getElementById('weights');"
                "return !w.hidden && w.complete && w.naturalWidth > 0;"
            ),
            "default channel's weights",
        )
        chosen = driver.find_element(By.CSS_SELECTOR, "#grid figure.chosen")
        assert not driver.find_element(By.ID, "channel-caption").text.startswith("constant map")
        assert driver.find_element(By.ID, "channel-title").text.endswith(
            f"channel {chosen.get_attribute('data-channel')}"
        )
        assert driver.execute_script("return document.getElementById('weights').width") >= 160
        Select(driver.find_element(By.ID, "inside-layer")).select_by_value("features.0")
        until(
            driver,
            lambda: driver.find_element(By.ID, "channel-title").text.startswith("features.0"),
            "channel of features.0",
        )
        driver.find_elements(By.CSS_SELECTOR, "#grid figure")[3].click()
        until(
            driver,
            lambda: not driver.find_element(By.ID, "weights").get_attribute("hidden"),
            "weights",
        )
        driver.find_element(By.ID, "visual-start").click()
        until(
            driver,
            lambda: not driver.find_element(By.ID, "visual").get_attribute("hidden"),
            "visual",
        )

        # Upload a PNG: new picture, new maps.
        picture = tmp_path / "mug.png"
        cnnlens.sample_image("coffee").rotate(90).save(picture)
        upload = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", upload)
        old_picture = driver.find_element(By.ID, "picture").get_attribute("src")
        upload.send_keys(str(picture))
        until(
            driver,
            lambda: driver.find_element(By.ID, "picture").get_attribute("src") != old_picture,
            "upload",
        )
        wait_map(driver, "gradcam", gradcam["src"])
        wait_map(driver, "guided_backprop")
        until(driver, lambda: not driver.execute_script(LOADED), "every image loads")
        assert console_errors(driver) == []
        driver.save_screenshot(str(tmp_path / "explorer.png"))
        if SCREENSHOT_TO:
            driver.save_screenshot(SCREENSHOT_TO)

        # A failed upload shows its message (and the browser logs only that refused request).
        text = tmp_path / "notes.txt"
        text.write_text("not a picture")
        upload.send_keys(str(text))
        message = until(
            driver,
            lambda: (
                driver.find_element(By.ID, "upload-error").is_displayed()
                and driver.find_element(By.ID, "upload-error").text
            ),
            "upload error shown",
        )
        assert "notes.txt" in message and "text/plain" in message
        errors = console_errors(driver)
        assert all("/api/images" in e and "415" in e for e in errors), errors
        # A corrupt PNG: the decoder's message.
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        upload.send_keys(str(broken))
        shown = until(
            driver,
            lambda: "broken.png" in (t := driver.find_element(By.ID, "upload-error").text) and t,
            "corrupt upload message",
        )
        assert "corrupt" in shown or "not an image" in shown
        with Image.open(tmp_path / "explorer.png") as screenshot:
            assert screenshot.width > 0
