"""Screenshots of the four tabs for the README: launch the app, drive it in headless Chromium.

Explain answers a demo question; Distill runs a tiny experiment (demo set, demo preset, sizes
cut further: extraction, training per mode, evaluation, results table) from the page
(so Compare and Overlap have a run to show); Compare puts the trained runs side by side;
Overlap analyses the job's rationale file. One full-page PNG per tab goes to --out.

    python bench/screenshots.py [--teacher SPEC] [--student SPEC] [--out assets/screenshots]
                                [--examples 12] [--dev 4] [--steps 6] [--runs DIR]

Defaults use the real SmolLM2 pack as teacher and student (a few seconds per answer on a CPU;
the whole script takes a few minutes). Needs /usr/bin/chromium (or --chromium).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHOICES = "Choices (separate with | or new lines)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visible(page, label: str):
    return page.get_by_label(label, exact=True).locator("visible=true").first


def shot(page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.wait_for_timeout(800)  # let plotly finish its transitions
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}", flush=True)
    return path


def pick_example(page, text: str) -> None:
    """Click the visible example button whose label contains ``text``."""
    page.locator("button:visible", has_text=text).first.click()


def explain_tab(page, out: Path) -> None:
    pick_example(page, "unlock the front door")
    page.locator("#kd-explain").click()
    page.locator("#kd-heatmap .js-plotly-plot .main-svg").first.wait_for()
    page.locator("#kd-answer").filter(has_text="Teacher").wait_for()
    shot(page, out, "explain")


def distill_tab(page, out: Path, examples: int, dev: int, steps: int, timeout_s: float) -> None:
    page.get_by_role("tab", name="Distill").click()
    page.get_by_label("demo", exact=True).check()  # the demo preset, on the demo set
    visible(page, "Training examples (0 = all)").fill(str(examples))
    visible(page, "Dev examples").fill(str(dev))
    visible(page, "Steps (0 = by epochs)").fill(str(steps))
    page.locator("#kd-start").click()
    job = page.locator("#kd-job")
    job.filter(has_text="running").wait_for()
    end = time.time() + timeout_s
    while time.time() < end:
        text = job.inner_text().lstrip()
        if text.startswith(("finished", "failed", "stopped")):
            break
        page.wait_for_timeout(1000)
    print("distill:", job.inner_text().splitlines()[0], flush=True)
    if job.inner_text().lstrip().startswith("finished"):
        page.locator("#kd-results").filter(has_text="zero-shot").wait_for()
    shot(page, out, "distill")


def compare_tab(page, out: Path) -> None:
    page.get_by_role("tab", name="Compare").click()
    pick_example(page, "keep milk")
    runs = page.get_by_label("Trained runs to compare")
    for name in ("train-standard", "train-saliency"):
        runs.click()
        option = page.get_by_role("option").filter(has_text=name)
        if option.count():
            option.first.click()
    page.keyboard.press("Escape")
    page.locator("#kd-compare").click()
    page.locator(".kd-cards .kd-teacher").wait_for(timeout=300_000)
    shot(page, out, "compare")


def overlap_tab(page, out: Path) -> None:
    page.get_by_role("tab", name="Overlap").click()
    source = page.get_by_label("Rationale file (from a run)")
    source.click()
    options = page.get_by_role("option")
    if options.count():
        options.first.click()
    page.locator("#kd-overlap").click()
    page.locator(".kd-table").wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')]"
        ".filter(p => (p.data || []).some(t => ['bar', 'histogram'].includes(t.type)))"
        ".length >= 2"
    )
    shot(page, out, "overlap")


def main(argv: list[str] | None = None) -> int:
    from explain.packs import DEFAULT_STUDENT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=DEFAULT_STUDENT, help="teacher spec (default: SmolLM2)")
    p.add_argument("--student", default=DEFAULT_STUDENT, help="student spec (default: SmolLM2)")
    p.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    p.add_argument("--runs", help="runs folder (default: a fresh temporary one)")
    p.add_argument("--examples", type=int, default=12, help="Distill: training examples")
    p.add_argument("--dev", type=int, default=4, help="Distill: dev examples")
    p.add_argument("--steps", type=int, default=6, help="Distill: training steps per mode")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    import app

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="kdlens-shots-"))
    demo = app.build_app(args.teacher, args.student, runs_dir=runs)
    _, url, _ = app.launch_app(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.set_default_timeout(300_000)  # first answers load the models
            page.goto(url)
            page.locator("#kd-explain").wait_for()
            explain_tab(page, out)
            distill_tab(page, out, args.examples, args.dev, args.steps, args.timeout)
            compare_tab(page, out)
            overlap_tab(page, out)
            browser.close()
    finally:
        demo.kdlens.jobs.stop()
        demo.kdlens.jobs.wait(60)
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
