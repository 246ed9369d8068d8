"""The app in a real headless browser (Debian's chromium through Playwright).

Explain renders the plotly heatmap (and a click on it picks an answer token), the Distill
tab's demo set (the bundled sample, as on a clone without ../shared) trains to the results
table, a long distillation starts and stops from the page, every tab leaves a screenshot in
test-output/screenshots/ (gitignored), and a phone-width page keeps the heatmap scrollable.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from test_app import launch, make_fixture_runs, save_tiny_model, write_cqa

    from distill.datasets import SAMPLE_DATASETS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; leave the second core to the browser
    root = tmp_path_factory.mktemp("browser")
    model = save_tiny_model(root / "tiny-llama")
    data = write_cqa(root / "datasets")
    runs = root / "runs"
    runs.mkdir()
    make_fixture_runs(model, data, runs)
    # The datasets folder a clone without ../shared gets: the bundled sample (assets/data).
    demo, url = launch(model, runs, SAMPLE_DATASETS)
    yield {"url": url, "data": data, "demo": demo}
    demo.kdlens.jobs.stop()
    demo.kdlens.jobs.wait(30)
    demo.close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(app_url["url"])
    pg.locator("#kd-explain").wait_for()
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def visible(page, label: str):
    """The visible textbox with this label (each tab has its own form)."""
    return page.get_by_label(label, exact=True).locator("visible=true").first


def test_explain_renders_the_heatmap_and_a_click_picks_a_token(page):
    visible(page, "Question").fill("Where would you put a plate after washing it?")
    visible(page, "Choices (separate with | or new lines)").fill("cupboard | table | sink")
    page.locator("#kd-explain").click()
    plot = page.locator("#kd-heatmap .js-plotly-plot")
    plot.locator(".main-svg").first.wait_for()
    kind = page.evaluate("() => document.querySelector('#kd-heatmap .js-plotly-plot').data[0].type")
    assert kind == "heatmap"
    ticks = page.locator("#kd-heatmap .xtick text").all_text_contents()
    assert "plate" in ticks and "cupboard" in ticks
    assert "Teacher's answer" in page.locator("#kd-answer").inner_text()
    page.get_by_role("button", name="Export JSON, CSV and HTML").click()
    for ext in ("json", "csv", "html"):  # three download links
        page.locator(f'[aria-label="kdlens-saliency.{ext}"]').first.wait_for()
    shot(page, "explain")
    # A click on the first heatmap row selects that answer token in the list.
    # (plotly reports a click at the point hovered last: move there first, in view)
    drag = plot.locator(".nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    rows = page.evaluate("() => document.querySelector('#kd-heatmap .js-plotly-plot').data[0].y")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / (2 * len(rows))
    page.mouse.move(x, y)
    page.mouse.move(x + 1, y + 1)
    page.mouse.click(x + 1, y + 1)
    page.wait_for_function(
        "() => (document.querySelector('#kd-explain-status') || {}).innerText"
        "?.includes('answer token 0')"
    )
    assert page.locator("#kd-token input[value='0']").is_checked()


def test_compare_and_overlap_tabs(page):
    tab(page, "Compare")
    visible(page, "Question").fill("Where do you wash a plate?")
    visible(page, "Choices (separate with | or new lines)").fill("sink | stage | cupboard")
    visible(page, "Gold answer (optional: marks answers correct/wrong)").fill("sink")
    page.locator("#kd-compare").click()
    page.locator(".kd-cards .kd-teacher").wait_for()
    assert page.locator(".kd-cards .kd-card").count() == 3
    shot(page, "compare")

    tab(page, "Overlap")
    dropdown = page.get_by_label("Rationale file (from a run)")
    dropdown.click()
    page.get_by_role("option", name="fixture-extract").click()
    page.locator("#kd-overlap").click()
    page.locator(".kd-table").wait_for()
    assert page.locator(".kd-table tr").count() == 11
    page.wait_for_function(  # the summary bars and the histograms are drawn
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".filter(p => (p.data || []).some(t => ['bar', 'histogram'].includes(t.type)))"
        ".length >= 2"
    )
    shot(page, "overlap")


def distill_form(page, train: int, dev: int, steps: int) -> None:
    """The Distill tab on the demo set and demo preset, with tiny sizes typed in."""
    tab(page, "Distill")
    page.get_by_label("demo set", exact=True).check()
    page.get_by_label("demo", exact=True).check()
    assert "demo: 16 training / 8 dev examples, 8 steps" in page.locator("#kd-presets").inner_text()
    visible(page, "Training examples (0 = all)").fill(str(train))
    visible(page, "Dev examples").fill(str(dev))
    visible(page, "Steps (0 = by epochs)").fill(str(steps))


def test_distill_cpu_preset_follows_the_task(page):
    """The cpu preset sizes each task's training set (distill.plan.CPU_TRAIN_SIZES): choosing
    another task in the form changes the number the run will use."""
    from distill.plan import CPU_TRAIN_SIZES

    tab(page, "Distill")
    page.get_by_label("cpu", exact=True).check()
    size = visible(page, "Training examples (0 = all)")

    def shows(value: str) -> None:
        page.wait_for_function("([el, v]) => el.value == v", arg=[size.element_handle(), value])
        assert size.input_value() == value

    shows(str(CPU_TRAIN_SIZES["cqa"]))  # the form opens on cqa
    for task in ("esnli", "svamp", "cqa"):
        page.get_by_label("Task", exact=True).click()
        page.get_by_role("option", name=task, exact=True).click()
        shows(str(CPU_TRAIN_SIZES[task]))
    # A preset with one size for every task leaves the number as the user typed it.
    page.get_by_label("demo", exact=True).check()
    size.fill("7")
    page.get_by_label("Task", exact=True).click()
    page.get_by_role("option", name="esnli", exact=True).click()
    page.wait_for_timeout(500)
    assert size.input_value() == "7"


def start_and_finish(page):
    """Start the Distill job, wait until it ends, check it finished; the results panel."""
    page.locator("#kd-start").click()
    job = page.locator("#kd-job")
    job.filter(has_text=re.compile(r"^\s*(finished|failed|stopped)")).wait_for(timeout=240_000)
    assert job.inner_text().lstrip().startswith("finished"), job.inner_text()
    return page.locator("#kd-results")


def test_distill_two_seeds_from_the_page(page):
    """Seeds typed under More settings: one student per seed, both in the results table, and
    the note that dev-split seeds cannot be pooled."""
    distill_form(page, train=6, dev=2, steps=2)
    page.get_by_label("saliency", exact=True).uncheck()  # standard only: half the work
    page.get_by_text("More settings", exact=True).locator("visible=true").first.click()
    seeds = page.locator("#kd-seeds textarea, #kd-seeds input").first
    assert seeds.input_value() == "0"
    seeds.fill("0 1")
    results = start_and_finish(page)
    results.filter(has_text="cannot be paired").wait_for()
    row = results.locator("tr", has=page.locator("td", has_text=re.compile("^standard$")))
    assert re.search(r"s0: .*; s1: ", row.first.inner_text()), row.first.inner_text()
    shot(page, "distill-two-seeds")


def test_distill_demo_set_trains_to_the_results_table(page):
    distill_form(page, train=6, dev=2, steps=2)  # standard and saliency (the tiny teacher)
    results = start_and_finish(page)
    results.filter(has_text="zero-shot").wait_for()
    for row in ("standard", "saliency"):
        assert results.locator("td", has_text=re.compile(f"^{row}$")).count() == 1
    page.wait_for_function(  # both stages' loss curves, read from their stage folders
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".some(p => (p.data || []).filter(t => (t.name || '').endsWith(' loss')).length == 2)"
    )
    shot(page, "distill-finished")


def test_distill_starts_and_stops_from_the_page(page, app_url):
    distill_form(page, train=6, dev=2, steps=5000)
    page.get_by_label("saliency", exact=True).uncheck()
    page.locator("#kd-start").click()
    job = page.locator("#kd-job")
    job.filter(has_text=re.compile(r"step \d+/5000")).wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".some(p => (p.data || []).some(t => (t.name || '').includes('loss')))"
    )
    shot(page, "distill")
    page.locator("#kd-stop").click()
    job.filter(has_text="stopped").wait_for()
    assert "resumable" in job.inner_text()
    page.locator("text=standard").first.wait_for()
    shot(page, "distill-stopped")


def test_narrow_screen_keeps_the_heatmap_scrollable(browser, app_url):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url["url"])
    words = "plate sink table apples music guitar stage kitchen cupboard restaurant".split()
    text = " ".join(words[i % len(words)] for i in range(200))  # cut to the tiny context
    page.get_by_label("Free text").check()
    visible(page, "Text").fill(text)
    page.locator("#kd-explain").click()
    page.locator("#kd-heatmap .js-plotly-plot .main-svg").first.wait_for()
    page.wait_for_function(  # the app's script restores the figure's own width
        "() => { const p = document.querySelector('#kd-heatmap .js-plotly-plot');"
        " return p._fullLayout && p._fullLayout.width > 500; }"
    )
    widths = page.evaluate(
        "() => { const e = document.querySelector('#kd-heatmap');"
        " const p = e.querySelector('.js-plotly-plot');"
        " return [e.clientWidth, e.scrollWidth, p._fullLayout.width, p.data[0].x.length,"
        " document.documentElement.scrollWidth]; }"
    )
    box, scroll, plot, columns, page_width = widths
    assert columns >= 40 and plot >= 17 * columns  # about 18 px per word: labels stay legible
    assert scroll > box  # the heatmap scrolls inside its box...
    assert page_width <= 390 + 2  # ...not the page
    shot(page, "explain-narrow")
    ctx.close()


@pytest.fixture
def cold_app(tmp_path):
    """A second app whose teacher is not loaded yet; its loader reports a step and takes two
    seconds (a slow disk), so the page has time to show what happens before the answer."""
    import time

    from test_app import launch, save_tiny_model, write_cqa

    from explain.models import load_model

    def slow_loader(spec, progress=None, **kw):
        if progress:
            progress("tiny-llama: reading the weights from disk", 0.5)
        time.sleep(2.0)
        return load_model(spec, progress=progress, **kw)

    model = save_tiny_model(tmp_path / "cold-llama")
    runs = tmp_path / "runs"
    runs.mkdir()
    demo, url = launch(model, runs, write_cqa(tmp_path / "datasets").parents[1], slow_loader)
    yield url
    demo.close()


def test_first_explain_shows_loading_progress_before_the_answer(browser, cold_app):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(cold_app)
    page.locator("#kd-explain").wait_for()
    assert "not loaded" in page.locator("#kd-models").inner_text()
    # Record every text the page shows, in order, from before the click.
    page.evaluate(
        "() => { window.kdSeen = []; const seen = new Set();"
        " new MutationObserver(() => { const t = document.body.innerText;"
        "   for (const line of t.split('\\n')) if (!seen.has(line)) {"
        "     seen.add(line); window.kdSeen.push(line); } })"
        " .observe(document.body, {subtree: true, childList: true, characterData: true}); }"
    )
    visible(page, "Question").fill("Where would you put a plate after washing it?")
    visible(page, "Choices (separate with | or new lines)").fill("cupboard | table | sink")
    page.locator("#kd-explain").click()
    page.locator("#kd-answer").filter(has_text="Teacher's answer").wait_for()
    seen = page.evaluate("() => window.kdSeen")
    # The loader's progress (its text and percent, Gradio's bar) and the header's model state
    # appear before the answer. (The app's own "loading teacher …" line is replaced at once by
    # the loader's first message here; the callback test checks the whole sequence.)
    keys = ("reading the weights from disk - 50.0%", "Teacher cold-llama: loading…")
    first = {key: next((i for i, s in enumerate(seen) if key in s), None)
             for key in (*keys, "Teacher's answer")}  # fmt: skip
    assert first["Teacher's answer"] is not None
    for key in keys:
        assert first[key] is not None and first[key] < first["Teacher's answer"], (key, seen)
    page.locator("#kd-models").filter(has_text="ready on cpu").wait_for()
    assert "the teacher took" in page.locator("#kd-explain-status").inner_text()
    shot(page, "explain-cold")
    ctx.close()
