"""The evaluation report renders in a real browser: Debian's headless ``chromium`` driven by playwright opens the
report.html that ``agnews.evaluation.evaluate_run`` wrote for a tiny run and checks that nothing is broken (no console
error, no failed or external request, every image decoded), that the numbers of evaluation.json are on the page, and
that a full-page screenshot is a picture, not a blank page.

chromium is a system package: ``make system-deps`` installs it (``make test`` runs it first). Without it this test
FAILS and says so; set ``AGNEWS_SKIP_BROWSER=1`` to skip it on purpose. playwright's own browser download is not used.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

# The flags keep a sandbox-less container happy (root, no GPU) and stop chromium from phoning home, so a request the
# page did not make cannot be mistaken for one it did.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_executable(environ=None) -> str:
    """The chromium binary (``$AGNEWS_CHROMIUM``, else ``chromium`` on PATH, else /usr/bin/chromium); a missing one
    fails the test with what to run, unless ``AGNEWS_SKIP_BROWSER=1`` asks to skip."""
    env = os.environ if environ is None else environ
    if env.get("AGNEWS_SKIP_BROWSER") == "1":
        if env.get("CI"):  # CI installs chromium (make system-deps): it must run this test, not skip it
            pytest.fail("AGNEWS_SKIP_BROWSER=1 is not allowed under CI: the browser test must run there")
        pytest.skip("AGNEWS_SKIP_BROWSER=1: the report's browser test is skipped on request")
    wanted = env.get("AGNEWS_CHROMIUM")
    found = wanted if wanted and os.access(wanted, os.X_OK) else None
    if not wanted:
        found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if not found:
        pytest.fail(
            f"chromium not found ({wanted or 'chromium on PATH, /usr/bin/chromium'}): the report's browser test needs "
            "Debian's chromium package. Run `make system-deps` (as root; `make test` does it), or set "
            "AGNEWS_SKIP_BROWSER=1 to skip this test on purpose."
        )
    return found


def inspect_page(url: str, executable: str, screenshot: Path) -> dict:
    """Open ``url`` in headless chromium and report what a reader would see: console errors, page errors, failed or
    non-local requests, each image's load state, the visible text and a full-page screenshot."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[report]' (make install installs it)")

    out = {"console_errors": [], "page_errors": [], "failed_requests": [], "external_requests": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: out["console_errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: out["page_errors"].append(str(e)))
            page.on("requestfailed", lambda r: out["failed_requests"].append(r.url[:120]))
            # A self-contained report loads nothing but itself and its data: URIs.
            page.on("request", lambda r: None if r.url.startswith(("data:", "file:")) else
                    out["external_requests"].append(r.url[:120]))
            page.goto(url, wait_until="load", timeout=60_000)
            out["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
                " width: i.naturalWidth, height: i.naturalHeight, src: i.src.slice(0, 22)}))"
            )
            # Decoding is async even after 'load' in some builds; wait until every image says it is complete.
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000)
            out["images"] = page.evaluate(
                "() => Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,"
                " width: i.naturalWidth, height: i.naturalHeight, src: i.src.slice(0, 22)}))"
            )
            # Attribution heat-maps are HTML (token spans coloured inline), not images: count the ones drawn in colour.
            out["heatmap_tokens"] = page.evaluate(
                "() => Array.from(document.querySelectorAll('span.attr')).filter(e => e.getBoundingClientRect().width"
                " > 0 && getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)').length"
            )
            out["text"] = page.inner_text("body")
            out["headings"] = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent.trim())")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out


def screenshot_stats(path: Path) -> dict:
    """Size, number of distinct colours, grey-level spread and the share of non-white pixels of a PNG."""
    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    pixels = np.asarray(image, dtype=np.int16)
    flat = pixels.reshape(-1, 3)
    grey = flat.mean(axis=1)
    return {
        "size": image.size,
        "colours": len(np.unique(flat[:: max(1, len(flat) // 400_000)], axis=0)),
        "grey_std": float(grey.std()),
        "non_white": float((grey < 245).mean()),
    }


def assert_renders(info: dict, expected_images: int) -> None:
    assert info["console_errors"] == [], info["console_errors"]
    assert info["page_errors"] == [], info["page_errors"]
    assert info["failed_requests"] == [], info["failed_requests"]
    assert info["external_requests"] == [], f"the report must be self-contained: {info['external_requests']}"
    assert len(info["images"]) == expected_images, info["images"]
    broken = [i for i in info["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == [], f"images that did not load: {broken}"
    assert all(i["src"] == "data:image/png;base64," for i in info["images"]), "figures must be embedded PNGs"
    assert all(i["alt"].strip() for i in info["images"]), "every image needs an alt text"


# ---- the checker itself catches a broken page -----------------------------------------------------------------------
def test_checker_catches_console_errors_broken_images_and_blank_pages(tmp_path):
    executable = chromium_executable()
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><h2>x</h2><img src="data:image/png;base64,AAAA" alt="broken">'
        "<script>console.error('boom')</script></body></html>"
    )
    info = inspect_page(broken.as_uri(), executable, tmp_path / "broken.png")
    assert info["console_errors"] == ["boom"]
    assert info["images"][0]["width"] == 0
    with pytest.raises(AssertionError):
        assert_renders(info, expected_images=1)
    stats = screenshot_stats(tmp_path / "broken.png")
    # An (almost) empty page reads as blank: anti-aliased text alone gives colours but no spread and no ink.
    assert stats["non_white"] < 0.01 and stats["grey_std"] < 10, stats


def test_missing_chromium_fails_with_the_fix_and_skip_is_explicit():
    with pytest.raises(pytest.fail.Exception, match="make system-deps"):
        chromium_executable({"AGNEWS_CHROMIUM": "/nonexistent/chromium"})
    with pytest.raises(pytest.skip.Exception):
        chromium_executable({"AGNEWS_SKIP_BROWSER": "1", "AGNEWS_CHROMIUM": "/nonexistent/chromium"})


# ---- a real report --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_report(tiny_run_factory, tmp_path_factory) -> Path:
    """The report of a tiny run with every section that runs offline, on small samples."""
    from agnews.evaluation.sections import evaluate_run

    run = tiny_run_factory("minilm")
    out = tmp_path_factory.mktemp("browser_report") / "evaluation"
    evaluate_run(
        run,
        output_dir=out,
        sample_size=16,
        seed=0,
        significance={"n_resamples": 200},
        attribution={"sample_size": 4, "n_steps": 8, "max_n_steps": 16, "shap_max_evals": 40, "random_draws": 2,
                     "top_k": 2},
        attack={"max_queries": 200},
    )
    return out


def test_report_renders_in_headless_chromium(tiny_report, tmp_path):
    executable = chromium_executable()
    html_text = (tiny_report / "report.html").read_text(encoding="utf-8")
    summary = json.loads((tiny_report / "evaluation.json").read_text())
    info = inspect_page((tiny_report / "report.html").as_uri(), executable, tmp_path / "report.png")

    assert_renders(info, expected_images=html_text.count("<img "))
    # Every figure file is on the page as an image, except the attribution heat-maps' PNG (report.md's copy: the page
    # draws them as coloured token spans).
    figures = sorted(p.stem for p in (tiny_report / "figures").glob("*.png") if p.stem != "attribution_heatmaps")
    assert len(info["images"]) >= len(figures) >= 4, (figures, info["images"])  # confusion, per-class, 2 reliability

    # Every section is on the page, under its title.
    sections = [key for key in summary if key != "meta"]
    assert {"metrics", "calibration", "errors", "robustness", "attack", "attribution"} <= set(sections)
    for key in sections:
        assert f'<section id="{key}">' in html_text
    assert len(info["headings"]) == len(sections) + 1  # + the table of contents

    # The key numbers of evaluation.json, as the report formats them (4 decimals), are in the visible text.
    text = info["text"]
    metrics, calibration = summary["metrics"], summary["calibration"]
    expected = {
        "accuracy": metrics["accuracy"], "macro-F1": metrics["f1_macro"], "NLL": metrics["nll"],
        "ECE before": calibration["before"]["ece"], "ECE after": calibration["after"]["ece"],
        "MCE before": calibration["before"]["mce"], "Brier before": calibration["before"]["brier"],
        "temperature": calibration["temperature"],
    }
    for name, value in expected.items():
        assert f"{value:.4f}" in text, f"{name} = {value:.4f} is not on the rendered page"
    assert str(metrics["num_examples"]) in text
    for name in summary["meta"]["label_names"]:
        assert name in text
    for mistake in summary["errors"]["most_confident_mistakes"][:3]:
        assert mistake["id"] in text
    from agnews.evaluation.report import fmt

    attack = summary["attack"]
    assert attack.get("skipped") is not True and attack["attacked"] > 0, attack  # "skipped" also counts examples
    for name in ("clean_accuracy", "attack_success_rate", "accuracy_under_attack"):
        assert fmt(attack[name]) in text, f"attack {name} = {fmt(attack[name])} is not on the rendered page"
    attribution = summary["attribution"]
    assert not attribution.get("skipped"), attribution
    assert info["heatmap_tokens"] > 10, "the attribution heat-maps must be drawn"
    for example in attribution["examples"]:
        assert example["id"] in text

    # A real picture: page-sized, many colours (plots, tables), not almost all white.
    stats = screenshot_stats(tmp_path / "report.png")
    assert stats["size"][0] >= 1000 and stats["size"][1] > 2000, stats
    assert stats["colours"] > 200 and stats["grey_std"] > 20 and stats["non_white"] > 0.03, stats


def main(argv: list[str]) -> None:
    """``python tests/test_evaluate_browser.py <report.html> <out.png> [height]``: the same headless check of any
    report, printed, plus a screenshot (full page, or the top ``height`` pixels) for the docs."""
    report, out = Path(argv[0]).resolve(), Path(argv[1])
    info = inspect_page(report.as_uri(), chromium_executable(), out)
    assert_renders(info, expected_images=report.read_text(encoding="utf-8").count("<img "))
    if len(argv) > 2:
        from PIL import Image

        image = Image.open(out)
        image.crop((0, 0, image.width, min(image.height, int(argv[2])))).save(out)
    print(json.dumps({k: v for k, v in info.items() if k != "text"}, indent=1)[:2000])
    print(screenshot_stats(out))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
