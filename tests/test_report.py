"""The Snakemake report: every figure and table in it has a caption and one of the report's
categories, and the report of a finished tiny run renders in a real headless browser.

``snakemake --report report.html`` writes one self-contained HTML page (a ``.zip`` report is for
results too large to embed): the page a user opens. It is a JavaScript app that shows one view at
a time, so the browser check injects a small script into a copy of the page that opens every
category, subcategory and result the way its menus do and records what the page then shows; the
DOM that Chromium dumps holds that record.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_workflow, tiny_config

CATEGORIES = {"Backdoor", "Experiments", "Maps", "Sanity checks", "Studies"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (apt-get install chromium, as .ci/run does): "
    "the report check needs a headless browser",
)

# What the tiny run puts in the report, by category (paths under results/).
TINY_REPORT = {
    "tables/cross_evaluation.csv": "Experiments",
    "figures/cross_evaluation/two_cnn2/original.png": "Experiments",
    "figures/cross_evaluation/two_cnn2/shuffled_per_map.png": "Experiments",
    "figures/cross_evaluation/two_cnn2_true_class/original.png": "Experiments",
    "tables/map_diagnostics.csv": "Maps",
    "figures/maps/two_cnn2.png": "Maps",
    "figures/maps/two_cnn2_true_class.png": "Maps",
    "tables/sanity_checks.csv": "Sanity checks",
    "figures/sanity/rank_correlation.png": "Sanity checks",
    "figures/sanity/maps/cnn2-seed0.png": "Sanity checks",
}

# Opens every category, subcategory and result through the app's own view switches (what its
# menu items call), then appends what it saw as JSON in <pre id="report-check">.
DRIVER = """
(async function () {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const navText = () => document.querySelector("nav").innerText;
  const record = { errors: [], landing: "", categories: {}, results: [] };
  try {
    const ready = () => typeof app !== "undefined" && document.querySelector("nav");
    for (let i = 0; i < 100 && !ready(); i++) {
      await sleep(100);
    }
    await sleep(300);
    record.landing = navText();
    for (const category of Object.keys(categories)) {
      app.showCategory(category);
      await sleep(100);
      record.categories[category] = {};
      for (const subcategory of Object.keys(categories[category])) {
        app.setView({ navbarMode: "subcategory", category: category, subcategory: subcategory });
        await sleep(100);
        record.categories[category][subcategory] = navText();
        for (const path of categories[category][subcategory]) {
          const entry = results[path];
          let image = null;
          if ((entry.mime_type || "").startsWith("image/")) {
            app.setView({ content: "img", contentPath: entry.data_uri, resultPath: path });
            await sleep(300);
            const img = Array.from(document.querySelectorAll("#app img"))
              .find((candidate) => candidate.src === entry.data_uri);
            image = img ? { complete: img.complete, width: img.naturalWidth } : null;
          }
          app.showResultInfo(path);
          await sleep(100);
          record.results.push({
            path: path, category: category, subcategory: subcategory,
            mime_type: entry.mime_type, caption: entry.caption || "", shown: navText(),
            image: image,
          });
        }
      }
    }
  } catch (err) {
    record.errors.push(String((err && err.stack) || err));
  }
  const out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify(record);
  document.body.appendChild(out);
})();
"""


def report_calls() -> list[tuple[str, str]]:
    """(rule file, text of the report(...) call) for every report() in rules/*.smk."""
    calls = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for match in re.finditer(r"report\((.*?)\n\s*\),", smk.read_text(), flags=re.S):
            calls.append((smk.name, match.group(1)))
    return calls


def test_every_report_item_has_a_caption_and_a_known_category():
    calls = report_calls()
    assert len(calls) >= 9
    for name, call in calls:
        category = re.search(r'category="([^"]+)"', call)
        assert category and category.group(1) in CATEGORIES, (name, call)
        caption = re.search(r'caption="([^"]+)"', call)
        assert caption, (name, call)
        path = (REPO / "rules" / caption.group(1)).resolve()
        assert path.parent == REPO / "report" and path.read_text().strip(), (name, path)


def plain(caption_html: str) -> str:
    """A caption's text as the page shows it: tags dropped, entities decoded, spaces folded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", caption_html)).split())


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory) -> Path:
    """report.html of a copy of the finished tiny run (the report writes Snakemake's log)."""
    root = tmp_path_factory.mktemp("report")
    workdir = shutil.copytree(tiny_run, root / "run", symlinks=True)
    path = root / "report.html"
    run_workflow(workdir, tiny_config(), "--report", str(path))
    return path


@needs_chromium
def test_report_renders_every_category_caption_and_image(report, tmp_path):
    text = report.read_text()
    assert text.lstrip().lower().startswith("<!doctype html")  # one page, not a zip
    driven = tmp_path / "report.html"
    end = text.rindex("</body>")
    driven.write_text(text[:end] + f"<script>{DRIVER}</script>" + text[end:])
    proc = chromium("--dump-dom", driven.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"no record in the dumped DOM; chromium said:\n{proc.stderr[-3000:]}"
    record = json.loads(html.unescape(found.group(1)))
    assert record["errors"] == []

    # the landing page lists the categories; only known ones, each the tiny run fills
    assert set(record["categories"]) == {"Experiments", "Maps", "Sanity checks"}
    for category in record["categories"]:
        assert category in record["landing"]

    shown = {r["path"].removeprefix("results/"): r for r in record["results"]}
    assert {path: r["category"] for path, r in shown.items()} == TINY_REPORT
    for path, result in shown.items():
        caption = plain(result["caption"])
        assert len(caption) > 40, path
        assert caption[:60] in " ".join(result["shown"].split()), path  # rendered beside it
        listing = record["categories"][result["category"]][result["subcategory"]]
        assert result["path"] in listing, path
        if path.endswith(".png"):
            assert result["mime_type"] == "image/png", path
            assert result["image"] and result["image"]["complete"], path
            assert result["image"]["width"] > 50, path  # decoded, not a broken image


@needs_chromium
def test_report_screenshot_is_not_blank(report, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    proc = chromium(
        "--window-size=1200,800", f"--screenshot={png}", report.as_uri(), profile=tmp_path / "p"
    )
    assert png.exists(), proc.stderr[-3000:]
    with Image.open(png) as image:
        assert image.size == (1200, 800)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 20  # the page drew something
