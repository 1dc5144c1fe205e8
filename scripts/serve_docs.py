"""Figures and screenshots for docs/serve.md: the explorer on EfficientNet-Lite0.

Measures (over HTTP on loopback, uvicorn in this process) the first and the following
Grad-CAM/saliency answers, runs the bounded load test (8 clients x 25 mixed requests: no 5xx,
every answer equal to the single-client one, the model unchanged) and takes screenshots in
headless Chromium. Run once: ``python scripts/serve_docs.py --out docs/img`` (the docs keep
the screenshots as 256-colour PNGs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import chromium  # noqa: E402
from tests.serve_support import running_server  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.serve import create_app  # noqa: E402


def timed(client: Any, verb: str, path: str, **params: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    answer = client.request(verb, path, params=params)
    seconds = time.perf_counter() - start
    assert answer.status_code < 300, answer.text
    return seconds, answer.json()


def latencies(url: str) -> list[tuple[str, float, float | None]]:
    """(request, seconds over HTTP, seconds the server spent computing)."""
    import httpx2 as httpx

    rows: list[tuple[str, float, float | None]] = []
    with httpx.Client(base_url=url, timeout=300) as c:
        seconds, info = timed(c, "POST", "/api/samples/cat")
        rows.append(("choose the cat sample (forward pass, top-5)", seconds, None))
        image = f"/api/images/{info['id']}"
        top = [t["index"] for t in info["top"]]
        steps = [
            ("Grad-CAM, top class (first request)", {"method": "gradcam"}),
            ("Grad-CAM, 2nd class", {"method": "gradcam", "target": top[1]}),
            ("Grad-CAM, 3rd class", {"method": "gradcam", "target": top[2]}),
            ("Grad-CAM, layer _blocks.10", {"method": "gradcam", "layer": "_blocks.10"}),
            (
                "Grad-CAM, layer _blocks.5, 2nd class",
                {"method": "gradcam", "layer": "_blocks.5", "target": top[1]},
            ),
            ("saliency, top class", {"method": "saliency"}),
            ("saliency, 2nd class", {"method": "saliency", "target": top[1]}),
            ("saliency, signed map", {"method": "saliency", "display": "signed"}),
            ("CAM, top class", {"method": "cam"}),
            ("Grad-CAM, top class again (cached)", {"method": "gradcam"}),
        ]
        for name, params in steps:
            seconds, body = timed(c, "GET", f"{image}/explain", **params)
            rows.append((name, seconds, body["seconds"]))
        seconds, body = timed(c, "GET", f"{image}/curves", method="gradcam")
        rows.append(("deletion/insertion curves, 16 steps", seconds, body["seconds"]))
        seconds, _ = timed(c, "GET", f"{image}/activations", layer="_blocks.10")
        rows.append(("activation grid, _blocks.10 (64 tiles)", seconds, None))
    return rows


def mixed(image: str, top: list[int]) -> list[tuple[str, dict[str, Any]]]:
    base = f"/api/images/{image}"
    kinds = [
        lambda i: (f"{base}/explain", {"method": "gradcam", "target": top[i % 5]}),
        lambda i: (f"{base}/explain", {"method": "saliency", "target": top[i % 5]}),
        lambda i: (
            f"{base}/explain",
            {"method": "gradcam", "target": top[i % 5], "layer": "_blocks.10"},
        ),
        lambda i: (f"{base}/activations", {"layer": "_blocks.10", "top": 16}),
        lambda i: (f"{base}/channel", {"layer": "_blocks.10", "channel": i}),
        lambda i: (f"{base}/predictions", {"k": 5}),
        lambda i: (f"{base}/explain", {"method": "cam", "target": top[i % 5]}),
        lambda i: (f"{base}/explain", {"method": "guided_backprop", "target": top[i % 5]}),
    ]
    return [kinds[i % len(kinds)](i) for i in range(25)]


def comparable(body: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in body.items() if k not in ("seconds", "cached")}, sort_keys=True
    )


def load_test(model: Any) -> dict[str, Any]:
    import httpx2 as httpx

    probe = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model.module(probe).clone()
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    with running_server(create_app(model)) as url, httpx.Client(base_url=url, timeout=600) as c:
        info = c.post("/api/samples/cat").json()
        top = [t["index"] for t in info["top"]]
        requests = mixed(info["id"], top)
        expected = {}
        for path, params in requests:
            expected[(path, json.dumps(params, sort_keys=True))] = comparable(
                c.get(path, params=params).json()
            )
    fresh = create_app(model)  # fresh caches: the work runs concurrently
    fresh.state.explorer.layer_infos()  # as `cnnlens serve` does before it listens
    with running_server(fresh) as url:
        with httpx.Client(base_url=url) as c:
            c.post("/api/samples/cat")

        def run(seed: int) -> list[tuple[int, bool, float]]:
            out = []
            order = requests[seed * 3 % 25 :] + requests[: seed * 3 % 25]
            with httpx.Client(base_url=url, timeout=600) as client:
                for path, params in order:
                    start = time.perf_counter()
                    answer = client.get(path, params=params)
                    seconds = time.perf_counter() - start
                    same = (
                        comparable(answer.json())
                        == expected[(path, json.dumps(params, sort_keys=True))]
                    )
                    out.append((answer.status_code, same, seconds))
            return out

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = [r for rs in pool.map(run, range(8)) for r in rs]
        wall = time.perf_counter() - start
    with torch.no_grad():
        unchanged = torch.equal(model.module(probe), before) and all(
            torch.equal(v, state[k]) for k, v in model.module.state_dict().items()
        )
    times = sorted(s for *_, s in results)
    return {
        "requests": len(results),
        "status_5xx": sum(s >= 500 for s, *_ in results),
        "non_200": sum(s != 200 for s, *_ in results),
        "different": sum(not same for _, same, _ in results),
        "p50": statistics.median(times),
        "p95": times[int(0.95 * len(times)) - 1],
        "max": times[-1],
        "wall": wall,
        "model_unchanged": unchanged,
    }


def screenshots(model: Any, out: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def wait(driver: Any, script: str, timeout: float = 600) -> None:
        WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))

    maps_loaded = (
        "const m = [...document.querySelectorAll('.panel img.map')];"
        "return m.length > 0 && m.every(i => i.complete && i.naturalWidth > 0) &&"
        " [...document.querySelectorAll('.panel')].every(p => p.querySelector('.curves svg'));"
    )
    with running_server(create_app(model)) as url, chromium(1500, 1250) as driver:
        driver.get(url + "/")
        wait(driver, "return document.body.dataset.ready")
        Select(driver.find_element(By.ID, "sample")).select_by_value("cat")
        wait(driver, maps_loaded)
        for method in ("guided_backprop", "lrp"):
            driver.find_element(By.CSS_SELECTOR, f'#methods input[value="{method}"]').click()
            wait(driver, maps_loaded)
        driver.execute_script("document.getElementById('explain-section').scrollIntoView()")
        driver.save_screenshot(str(out / "serve-explain.png"))
        driver.find_element(By.CSS_SELECTOR, '#methods input[value="occlusion"]').click()
        wait(
            driver, "return !!document.querySelector('.panel[data-method=occlusion] progress')", 60
        )
        driver.save_screenshot(str(out / "serve-job.png"))
        wait(driver, maps_loaded)
        Select(driver.find_element(By.ID, "inside-layer")).select_by_value("_blocks.10")
        wait(
            driver,
            "return document.getElementById('channel-title').textContent.startsWith('_blocks.10')",
        )
        driver.find_elements(By.CSS_SELECTOR, "#grid figure")[0].click()
        driver.find_element(By.ID, "visual-start").click()
        wait(driver, "return !document.getElementById('visual').hidden")
        driver.execute_script("document.getElementById('inside-section').scrollIntoView()")
        driver.save_screenshot(str(out / "serve-inside.png"))
        text = Path(tempfile.mkdtemp()) / "notes.txt"
        text.write_text("not a picture")
        upload = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", upload)
        upload.send_keys(str(text))
        wait(driver, "return !document.getElementById('upload-error').hidden")
        driver.execute_script("arguments[0].hidden = true", upload)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(out / "serve-upload-error.png"))


def index_screenshot(out: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from cnnlens.dataset import fashion_mnist

    model = cnnlens.load_model("fashion_cnn")
    data = fashion_mnist("test")
    folder = Path(tempfile.mkdtemp()) / "store"
    cnnlens.extract_features(model, data, "features.relu3", out=folder)
    app = create_app(model, index=folder, dataset=data)
    with running_server(app) as url, chromium(1500, 1500) as driver:
        driver.get(url + "/")
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.body.dataset.ready")
        )
        Select(driver.find_element(By.ID, "sample")).select_by_value("coffee")
        Select(driver.find_element(By.ID, "inside-layer")).select_by_value("features.relu2")
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.ID, "channel-title").text.startswith("features.relu2")
        )
        driver.find_element(By.ID, "patches-start").click()
        driver.find_element(By.ID, "neighbors-start").click()
        WebDriverWait(driver, 120).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#patches img")
                and d.find_elements(By.CSS_SELECTOR, "#neighbors-pixel img")
            )
        )
        time.sleep(0.5)
        driver.execute_script("document.getElementById('inside-section').scrollIntoView()")
        driver.save_screenshot(str(out / "serve-index.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--skip", default="", help="comma-separated: latency,load,shots,index")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    model = cnnlens.load_model("efficientnet_lite0")
    if "latency" not in skip:
        app = create_app(model)
        start = time.perf_counter()
        app.state.explorer.layer_infos()
        print(f"layers and receptive fields: {time.perf_counter() - start:.1f} s")
        with running_server(app) as url:
            for name, seconds, compute in latencies(url):
                extra = "" if compute is None else f" (compute {compute:.3f} s)"
                print(f"| {name} | {seconds:.3f} s{extra} |")
    if "load" not in skip:
        print(json.dumps(load_test(model), indent=1))
    if "shots" not in skip:
        screenshots(model, out)
    if "index" not in skip:
        index_screenshot(out)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
