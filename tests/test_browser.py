"""The app in a real browser: Playwright driving Debian's chromium against `python app.py` (tiny model).

Screenshots go to artifacts/screenshots/ (git-ignored). Playwright's own browser download is never used.
"""

import time
from pathlib import Path

import pytest

from conftest import synthetic_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make chromium)")


@pytest.fixture(scope="module")
def page(app_server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(app_server)
        yield page
        browser.close()


def heatmap_src(page) -> str:
    return page.locator("#heatmap img").get_attribute("src")


def test_upload_run_step_and_inspect(page, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    upload = tmp_path / "upload.png"
    synthetic_image(640, 480, seed=3).save(upload)

    page.wait_for_selector("#random-weights-banner")  # the tiny model says its answers are meaningless
    page.locator("#input-image input[type=file]").set_input_files(str(upload))
    page.wait_for_selector("#input-image img")
    page.click("#run-button")
    page.wait_for_selector("#heatmap img")
    page.wait_for_function("document.querySelector('#status').innerText.includes('640×480')")
    page.wait_for_function("document.querySelector('#iteration-caption').innerText.includes('Iteration 5 of 5')")
    final_src = heatmap_src(page)
    page.screenshot(path=str(SCREENSHOTS / "01_run_iteration_5.png"), full_page=True)

    # Move the iteration slider to 0: the heatmap is redrawn from the stored scores.
    slider = page.locator("#iteration-slider input[type=range]")
    slider.focus()
    slider.press("Home")
    page.wait_for_function("document.querySelector('#iteration-caption').innerText.includes('Iteration 0 of 5')")
    page.wait_for_function(f"document.querySelector('#heatmap img').getAttribute('src') !== {final_src!r}")
    assert heatmap_src(page) != final_src
    page.screenshot(path=str(SCREENSHOTS / "02_iteration_0.png"), full_page=True)

    # One step forward, timed from the key press until the new heatmap has loaded in the page.
    before = heatmap_src(page)
    start = time.perf_counter()
    slider.press("ArrowRight")
    page.wait_for_function(
        f"(() => {{ const img = document.querySelector('#heatmap img');"
        f" return img.getAttribute('src') !== {before!r} && img.complete; }})()"
    )
    print(f"\nbrowser step (key press → new heatmap loaded): {(time.perf_counter() - start) * 1e3:.0f} ms")
    assert "Iteration 1 of 5" in page.locator("#iteration-caption").inner_text()

    # Click a heatmap cell: the Inspect tab fills in that token.
    box = page.locator("#heatmap img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.get_by_role("tab", name="Inspect a token").click()
    page.wait_for_function("document.body.innerText.includes('Strongest sources')")
    page.wait_for_selector("#highlight img")
    page.screenshot(path=str(SCREENSHOTS / "03_inspect_token.png"), full_page=True)

    page.get_by_role("tab", name="Compare methods").click()
    page.wait_for_selector("#compare-gallery img")
    assert "Unpruned answer" in page.locator("#answers").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "04_compare_methods.png"), full_page=True)

    page.get_by_role("tab", name="Learn: graph & scores").click()
    page.wait_for_function("document.body.innerText.includes('mean degree')")
    page.screenshot(path=str(SCREENSHOTS / "05_learn_graph.png"), full_page=True)

    page.get_by_role("tab", name="Keep-ratio sweep").click()
    page.get_by_role("button", name="Run sweep").click()
    page.wait_for_selector("#stability-plot img")
    page.screenshot(path=str(SCREENSHOTS / "06_keep_ratio_sweep.png"), full_page=True)
