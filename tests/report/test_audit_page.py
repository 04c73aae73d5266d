"""`knowtune report AUDIT_DIR`: one audit as a self-contained page, opened in a real headless
browser (Chromium from the OS packages, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from knowtune.report.audit_page import advice
from knowtune.testing import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _records(counts: dict[str, int]) -> list[dict]:
    return [{"category": c} for c, n in counts.items() for _ in range(n)]


def test_advice_names_the_unknown_share_and_the_options():
    text = advice(_records({"HighlyKnown": 5, "MaybeKnown": 1, "WeaklyKnown": 2, "Unknown": 2}))
    assert "<b>2 (20%) carry facts the model does not know</b>" in text and "filter" in text and "self-distillation" in text
    assert "The 2 WeaklyKnown examples" in text
    assert "mostly teaches the format" in advice(_records({"HighlyKnown": 19, "Unknown": 1}))


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "audit"
    from knowtune.cli import main

    with pytest.raises(SystemExit) as done:
        main(["annotate", "--model", "default", "--data", "embedded", "--limit", "24", "--n-ex", "2", "--n-samples", "4", "--out", str(out)])
    assert done.value.code in (0, None)
    return out


def test_report_writes_a_page_for_one_audit(capsys, audit_dir):
    code, out, err = run_cli(capsys, "report", audit_dir)
    assert code == 0, err
    page = audit_dir / "audit.html"
    assert out.strip().splitlines()[-1] == str(page)
    text = page.read_text()
    assert "What fine-tuning on this set would teach" in text and text.count("data:image/png;base64,") == 2
    assert "answers matched by <b>exact</b>, decoding stopped at <code>\\n</code> or" in text  # the protocol's matcher and stop rule
    assert not re.search(r"""(src|href)=['"](http|//)""", text)  # self-contained
    code, _, err = run_cli(capsys, "report", audit_dir / "nowhere")
    assert code == 2 and "not found" in err


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no Chromium (CI installs it: apt-get install chromium)")
def test_page_renders_in_headless_chromium_with_its_figures_and_no_console_errors(capsys, audit_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "CI must have Chromium (apt-get install chromium)"
    assert run_cli(capsys, "report", audit_dir, "--out", tmp_path / "page.html")[0] == 0
    messages = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.goto((tmp_path / "page.html").resolve().as_uri())
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        headings = page.locator("h2").all_inner_texts()
        rows = page.locator("table").first.locator("tr").count()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert messages == []
    assert len(images) == 2 and all(done and width > 300 and height > 100 for done, width, height in images)
    assert headings[:3] == ["What fine-tuning on this set would teach", "Categories", "P0 and Ps"] and rows >= 3
    assert (tmp_path / "page.png").stat().st_size > 20_000
