"""`report`: report.html with the round table, the plot and held-out prompts answered by every
round side by side (the run's own zero-shot answers with their marks, or pool prompts answered
now), rendered by a real browser (headless Chromium)."""

import html
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from tests.helpers.cli import ok_here

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Tables(HTMLParser):
    """Rows and cells of each table with an id, as the browser's DOM has them."""

    def __init__(self):
        super().__init__()
        self.tables, self._current = {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._current = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._current is not None:
            self._current.append([])
        elif tag in ("td", "th") and self._current is not None:
            self._current[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._current = None

    def handle_data(self, data):
        if self._current and self._current[-1]:
            self._current[-1][-1] += data


@pytest.fixture(scope="module")
def reported(trained_run):
    result = ok_here("report", str(trained_run), "--answers", "2")
    return trained_run, result


@pytest.mark.slow
def test_report_shows_the_run_s_zero_shot_answers_with_their_marks_and_generates_nothing(reported):
    out, result = reported
    assert "answered" not in result.stdout and not (out / "base_held_out.json").exists()
    page = (out / "report.html").read_text()
    base = json.loads((out / "base_zero_shot.json").read_text())["records"]
    assert html.escape(base[0]["response"]) in page, "the base model's first zero-shot answer, as the run holds it"
    assert page.count("<div class=marks>") == 4, "each of 2 answers x 2 models carries its marks"
    assert page.count("✓ judged") + page.count("✗ judged") == 4, "and the verdict of the run's judge"
    warned = "[soft] warning: the best round 0 is aligned on" in (out.with_name("cli.stderr")).read_text()
    assert ("<p class=warning>Warning: the best round 0 is aligned on" in page) == warned, \
        "the page warns where the run did: its best round no better, by the mark, than a constant decline"


@pytest.mark.slow
def test_report_answers_held_out_prompts_once_per_round(trained_run):
    out = trained_run
    result = ok_here("report", str(out), "--answers", "2", "--held_out", "pool", "--max_new_tokens", "8")
    assert "base model answered 2 held-out prompts" in result.stdout and "round 0 answered 2" in result.stdout
    plan = json.loads((out / "plan.json").read_text())
    trained_on = {p["id"] for prompts in plan["rounds"] for p in prompts}
    base = json.loads((out / "base_held_out.json").read_text())
    round_0 = json.loads((out / "round_0" / "held_out.json").read_text())
    assert base["settings"]["prompts"] == round_0["settings"]["prompts"]
    assert len(base["answers"]) == 2 and not trained_on & set(base["settings"]["prompts"])
    again = ok_here("report", str(out), "--answers", "2", "--held_out", "pool", "--max_new_tokens", "8")
    assert "answered" not in again.stdout, "answers already in the store are re-used"
    assert json.loads((out / "round_0" / "held_out.json").read_text()) == round_0


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(reported, tmp_path):
    out, _ = reported
    page = (out / "report.html").as_uri()
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables = Tables()
    tables.feed(dom.stdout)
    rounds, side = tables.tables["rounds"], tables.tables["side-by-side"]
    assert rounds[0][:2] == ["round", "kept"] and [row[0] for row in rounds[1:]] == ["0"]
    assert side[0] == ["prompt", "base", "round 0"] and len(side) == 3 and all(len(row) == 3 for row in side)
    assert "data:image/png;base64," in dom.stdout, "the plot is inside the file"
    shot = tmp_path / "report.png"
    taken = subprocess.run([*browser, "--window-size=1200,900", f"--screenshot={shot}", page],
                           capture_output=True, text=True, timeout=120)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.size == (1200, 900)
    dark = sum(pixels.histogram()[:128])
    assert dark > 2000, "text and table lines drawn, not a blank page"
