"""The docs: the configuration reference is generated from the code and current, every setting
has its docstring, the README stays a front page, and every relative link resolves."""

import re
import subprocess
import sys

from tests.helpers.cli import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_configuration_reference_is_generated_and_current():
    sys.path.insert(0, str(ROOT / "docs"))
    import make_reference

    rows = make_reference.settings()
    assert len(rows) > 60
    undocumented = [key for key, _, text in rows if not text]
    assert not undocumented, f"settings without a docstring line: {undocumented}"
    assert (ROOT / "docs" / "configuration.md").read_text() == make_reference.render(), \
        "docs/configuration.md is stale: run python docs/make_reference.py"


def test_readme_is_a_front_page_and_every_relative_link_resolves():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]
    broken = [(page.name, target) for page in pages for target in LINK.findall(page.read_text())
              if "://" not in target and not (page.parent / target).exists()]
    assert not broken, broken


def test_ci_runs_exactly_the_readme_s_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True).returncode == 0
