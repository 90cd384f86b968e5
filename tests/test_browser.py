"""The app in a real browser, as a teacher would use it: Playwright driving Debian's chromium against
`python app.py` (tiny model), once at 1440×1000 and once at 390×844 (one browser session per viewport).

Each test asserts what the user sees; the screenshots go to artifacts/screenshots/ (git-ignored).
Playwright's own browser download is never used.
"""

import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
VIEWPORTS = {"desktop": (1440, 1000), "phone": (390, 844)}
KEEP_RATIO, REDRAW_RATIO = 0.25, 0.1

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (make chromium)")


class Browser:
    """One page at one viewport, the model calls it sent, and the console errors it logged."""

    def __init__(self, page, name, api_fn_index):
        self.page, self.name = page, name
        self.model_fn = {api_fn_index[api] for api in ("analyze", "sweep")}
        self.called: list[int] = []
        self.errors: list[str] = []
        page.on("request", self._record)
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))

    def _record(self, request):
        if "/queue/join" in request.url and request.method == "POST":
            self.called.append(request.post_data_json["fn_index"])

    def model_calls(self) -> int:
        return sum(fn in self.model_fn for fn in self.called)

    def shot(self, name: str, full_page: bool = True) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{self.name}-{name}.png"), full_page=full_page)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def wait_text(self, selector: str, fragment: str) -> None:
        self.page.wait_for_function(
            f"(document.querySelector({selector!r})?.innerText ?? '').includes({fragment!r})")

    def settle(self) -> None:
        """Wait for the page's smooth scrolling (to the results, to the inspect panel) to end."""
        last = None
        while (position := self.page.evaluate("window.scrollY")) != last:
            last = position
            self.page.wait_for_timeout(250)

    def tab(self, name: str) -> None:
        tab = self.page.get_by_role("tab", name=name, exact=True)
        if not tab.is_visible():  # a narrow tab row overflows into Gradio's "More tabs" menu
            self.page.locator("button[aria-label='More tabs']").first.click()
            tab = self.page.locator(".overflow-dropdown button", has_text=name)
        tab.click()

    def horizontal_overflow(self) -> int:
        """How many pixels the page is wider than the viewport (0 = no sideways scrolling)."""
        return self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    def in_viewport(self, selector: str) -> bool:
        self.page.wait_for_selector(selector)
        return self.page.evaluate(
            f"(() => {{ const box = document.querySelector({selector!r}).getBoundingClientRect();"
            " return box.height > 0 && box.top < window.innerHeight && box.bottom > 0; })()")


@pytest.fixture(scope="module", params=list(VIEWPORTS))
def browser(request, app_server):
    import httpx

    dependencies = httpx.get(app_server.rstrip("/") + "/config", timeout=30).json()["dependencies"]
    api_fn_index = {d["api_name"]: d["id"] for d in dependencies if d.get("api_name")}
    width, height = VIEWPORTS[request.param]
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(300_000)  # bounds a hang only: a busy machine is slow
        session = Browser(page, request.param, api_fn_index)
        page.goto(app_server)
        yield session
        chromium.close()


def test_run_from_an_example_lands_on_results_marked_as_toy(browser):
    page = browser.page
    page.wait_for_selector("#random-weights-banner")
    assert browser.in_viewport("#examples"), "the examples are above the fold"
    browser.shot("00-start", full_page=False)
    page.locator("#examples .gallery-item").first.click()  # astronaut.jpg and its question
    page.wait_for_selector("#input-image img")
    page.locator("#keep-ratio input[type=range]").fill(str(KEEP_RATIO))
    page.click("#run-button")
    browser.wait_text("#status", f"keep ratio {KEEP_RATIO} on model")  # the example's own (precomputed) is at 0.5
    browser.wait_text("#iteration-caption", "Iteration 5 of 5")
    browser.settle()
    assert browser.in_viewport("#heatmap img"), "after Run the results are scrolled into view"
    browser.shot("01-run", full_page=False)
    assert browser.model_calls() == 1
    # The heatmap has a colour bar with the keep cut; the mask legend explains every colour.
    assert "keep cut" in browser.text("#heatmap-legend") and "rank" in browser.text("#heatmap-legend")
    assert "entered since iteration 4" in browser.text("#mask-legend")
    browser.tab("Compare")
    page.wait_for_selector("#compare-gallery img")
    table = browser.text("#answers")
    assert "Toy model with random weights" in table and "FLOPs are computed for LLaVA-NeXT-7B" in table
    # The column header (a per-cell label on a phone, drawn by CSS) names the shapes too.
    assert "FLOPs at LLaVA-NeXT-7B shapes" in page.locator("#answers").text_content()
    assert "24.6%" in table and "29.3%" in table  # G-Prune and FastV at 7B shapes (the toy's own: 8.8 %, 54.4 %)
    assert "not measured" in table and " ms" not in table  # no single-sample timings
    assert f"ρ = {KEEP_RATIO}" in table
    assert browser.horizontal_overflow() == 0
    browser.shot("02-compare")


def test_heatmap_click_shows_the_token_beside_it(browser):
    page = browser.page
    browser.tab("Iterations")
    browser.settle()
    page.locator("#heatmap img").scroll_into_view_if_needed()
    box = page.locator("#heatmap img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.55)
    browser.wait_text("#token-info", "Strongest sources")
    page.wait_for_selector("#trace img")
    browser.settle()
    info = browser.text("#token-info")
    assert re.search(r"Token at r\d+ c\d+", info) and "packed position" in info
    assert re.search(r"Strongest sources[^:]*: r\d+ c\d+ \(", info), "neighbours are named by row and column"
    assert "representativegroup" not in info
    assert browser.in_viewport("#token-info") and browser.in_viewport("#highlight img")
    browser.shot("03-inspect", full_page=False)


def test_keep_ratio_redraws_masks_without_a_model_call(browser):
    page = browser.page
    calls_before = browser.model_calls()
    browser.tab("Compare")
    before = page.locator("#compare-gallery img").first.get_attribute("src")
    page.locator("#keep-ratio input[type=range]").fill(str(REDRAW_RATIO))
    browser.wait_text("#ratio-notice", f"redrawn at ρ = {REDRAW_RATIO}")
    page.wait_for_function(f"document.querySelector('#compare-gallery img').getAttribute('src') !== {before!r}")
    assert browser.model_calls() == calls_before, "moving the keep ratio must not call the model"
    assert f"ρ = {KEEP_RATIO}" in browser.text("#answers")  # the answers stay those of the run
    browser.tab("Iterations")
    browser.wait_text("#iteration-caption", f"kept 230 of 2,304 tokens at ρ = {REDRAW_RATIO}")
    browser.shot("04-keep-ratio-redraw")
    page.locator("#keep-ratio input[type=range]").fill(str(KEEP_RATIO))
    browser.wait_text("#ratio-notice", "the ratio that was run")


def test_play_steps_through_the_iterations(browser):
    page = browser.page
    browser.tab("Iterations")
    page.click("#play-button")  # at the last iteration: restarts from 0
    browser.wait_text("#iteration-caption", "Iteration 1 of 5")
    browser.wait_text("#iteration-caption", "Iteration 3 of 5")
    browser.wait_text("#iteration-caption", "Iteration 5 of 5")
    browser.wait_text("#play-button", "Play")
    # The legends end on the iteration shown, however the redraws interleaved.
    browser.wait_text("#heatmap-legend", "after iteration 5")
    browser.wait_text("#mask-legend", "entered since iteration 4")
    assert "Iteration 5 of 5" in browser.text("#iteration-caption")
    assert browser.model_calls() == 1


def test_every_tab_fits_the_screen(browser):
    page = browser.page
    for tab, ready in (("Iterations", "#heatmap img"), ("Learn", "#score-plot img"), ("JSON", None)):
        browser.tab(tab)
        if ready:
            page.wait_for_selector(ready)
        assert browser.horizontal_overflow() == 0, tab
        browser.shot(f"05-{tab.lower()}")
    browser.tab("Sweep")
    page.get_by_role("button", name="Run sweep").click()
    page.wait_for_selector("#stability-plot img")
    assert browser.horizontal_overflow() == 0
    browser.shot("06-sweep")
    if browser.name == "desktop":  # the files are the same at every size; build them once
        browser.tab("Iterations")
        assert not page.locator("#gif-file").is_visible()  # no empty file box before there is a GIF
        page.get_by_role("button", name="Make GIF of all iterations").click()
        page.wait_for_selector("#gif-file a")
        assert "gprune-astronaut-grid-iterations-keep0.25.gif" in browser.text("#gif-file").replace("\n", "")
        browser.tab("Export")
        page.get_by_role("button", name="Build ZIP").click()
        page.wait_for_selector("#export-file a")
        shown = browser.text("#export-file").replace("\n", "")  # the name wraps before its extension
        assert re.search(r"gprune-astronaut-keep0\.25-\d{4}-\d{2}-\d{2}\.zip", shown), shown
        browser.shot("07-export", full_page=False)
    assert browser.errors == []


def test_presentation_mode_hides_explanations(browser, app_server):
    page = browser.page
    page.goto(app_server.rstrip("/") + "/?presentation=1")
    page.wait_for_function("document.body.classList.contains('presentation')")
    assert not page.locator("#intro").is_visible()
    assert not page.get_by_text("What the graph is.").is_visible()
    assert page.locator("#random-weights-banner").is_visible()  # the toy warning stays
    page.locator("#examples .gallery-item").first.click()
    page.wait_for_selector("#input-image img")
    page.click("#run-button")
    browser.wait_text("#iteration-caption", "Iteration 5 of 5")
    browser.settle()
    page.locator("#heatmap img").scroll_into_view_if_needed()
    box = page.locator("#heatmap img").bounding_box()  # clicks still find their token under the zoom
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.76)
    browser.wait_text("#token-info", "y 384–395")  # y ≈ 389 of the 512×512 image: the middle of grid row 36 (rows are 10.7 px)
    browser.settle()
    assert browser.horizontal_overflow() == 0
    browser.shot("08-presentation", full_page=False)
    page.locator("#presentation-toggle input").uncheck()
    assert page.locator("#intro").is_visible()


def test_an_example_opens_its_precomputed_result_at_once(browser, app_server):
    """The shipped bundles: a click on an example shows its result without the model (no GPU on a Space)."""
    page = browser.page
    page.goto(app_server)
    page.wait_for_selector("#examples .gallery-item")
    calls_before = browser.model_calls()
    for index, size in ((1, "600×400"), (2, "451×300"), (3, "640×427")):  # coffee, chelsea, rocket
        before = page.evaluate("document.querySelector('#heatmap img')?.getAttribute('src') ?? ''")
        example = page.locator("#examples .gallery-item").nth(index)
        example.scroll_into_view_if_needed()
        browser.settle()
        example.click()  # how fast it opens is measured by bench/app_latency.py, not asserted here
        page.wait_for_function(f"(document.querySelector('#heatmap img')?.getAttribute('src') ?? '') !== {before!r}",
                               polling=20)
        page.wait_for_function(f"(document.querySelector('#status')?.innerText ?? '').includes('{size} image') && "
                               "document.querySelector('#status').innerText.includes('precomputed on random-weight "
                               "toy model tiny') && !document.querySelector('#results .generating')")
    assert browser.model_calls() == calls_before, "a precomputed example must not call the model"
    browser.settle()
    browser.shot("09-precomputed-example", full_page=False)
