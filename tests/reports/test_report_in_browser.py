"""The error report as a new user sees it: opened in headless Chromium, its fonts load and nothing overflows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.system_packages import missing_package

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_MISSING = missing_package("chromium", lambda: CHROMIUM is not None)
WIDTH = 1280

# Runs once the page and its fonts have loaded; --dump-dom then prints the DOM with this element in it.
MEASURE = """<script>
window.addEventListener('load', async () => {
  await document.fonts.ready;
  const faces = [];
  document.fonts.forEach(f => faces.push([f.family.replace(/["']/g, ''), f.status]));
  let widest = 0, culprit = '';
  for (const el of document.body.querySelectorAll('*')) {
    const right = el.getBoundingClientRect().right;
    if (right > widest) { widest = right; culprit = el.tagName + '.' + el.className; }
  }
  const distorted = [...document.querySelectorAll('.plots img')]
    .filter(i => Math.abs(i.width / i.height - i.naturalWidth / i.naturalHeight) > 0.02).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'measured';
  out.textContent = JSON.stringify({faces, widest, culprit, distorted, viewport: document.documentElement.clientWidth,
    khmer: document.fonts.check("20px 'gemma-ocr Khmer'", 'ខ្មែរ'), cjk: document.fonts.check("20px 'gemma-ocr CJK'", '發票')});
  document.body.appendChild(out);
});
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},2400", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


def measure(page: Path) -> dict:
    """Layout and fonts of ``page`` as Chromium lays it out."""
    probe = page.with_name("measured.html")
    probe.write_text(page.read_text(encoding="utf-8") + MEASURE, encoding="utf-8")
    done = _chromium("--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """The report of a Khmer and Chinese test set, against a baseline, with a 512-character runaway answer."""
    from gemma_ocr.reports.error_analysis import analyze_document, compare
    from gemma_ocr.reports.error_report import write_report
    from gemma_ocr.scoring.results import build_document

    out = tmp_path_factory.mktemp("browser_report")
    labels = ["ខ្មែរ", "ក្រុម", "發票號碼", "地址", "Invoice 42", "៥៦៧"]
    model = ["ខ្មេរ", "គ្រុម", "發票號馬", "地址", "Invoice 42", "X" * 512]
    base = ["ខ្មែរ", "ក្រុម", "發票", "他址", "lnvoice 4", "៥៦៧"]

    def doc(predictions: list[str], name: str) -> dict:
        return build_document([{"index": i, "image_path": str(out / f"{i}.png"), "label": l, "prediction": p,
                                "status": "ok"} for i, (l, p) in enumerate(zip(labels, predictions))], name,
                              intervals=False)

    tuned = analyze_document(doc(model, "tuned"))
    written = write_report(tuned, out / "report", worst=10, comparison=compare(tuned, analyze_document(doc(base, "base"))))
    return written.html


@pytest.mark.skipif(bool(CHROMIUM_MISSING), reason=CHROMIUM_MISSING or "installed")
@pytest.mark.slow
def test_the_report_draws_khmer_and_cjk_and_fits_the_window(report):
    from gemma_ocr.data.fonts import cjk_font

    found = measure(report)
    faces = dict(found["faces"])
    assert faces.get("gemma-ocr Khmer") == "loaded" and found["khmer"], found
    if cjk_font() is not None:
        assert faces.get("gemma-ocr CJK") == "loaded" and found["cjk"], found
    # the 512-character answer wraps inside its cell: no element reaches past the window
    assert found["widest"] <= found["viewport"] == WIDTH, found
    assert found["distorted"] == [], found  # a plot beside a taller one kept its shape (flex rows stretch images)
    assert "No font of the report has a glyph" not in report.read_text(encoding="utf-8")

    shot = report.with_name("screenshot.png")  # for a person to look at: tests/ keeps none
    _chromium(f"--screenshot={shot}", report.as_uri())
    from PIL import Image

    image = Image.open(shot)
    assert image.width == WIDTH and len(set(image.convert("L").tobytes())) > 10  # a page was drawn, not a blank


def test_the_scatter_says_where_it_clamps(report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gemma_ocr.reports.error_analysis import analyze_document, compare
    from gemma_ocr.reports.error_report import scatter_figure
    from gemma_ocr.scoring.results import build_document

    def doc(predictions, name):
        return build_document([{"index": i, "image_path": f"{i}.png", "label": "abcd", "prediction": p, "status": "ok"}
                               for i, p in enumerate(predictions)], name, intervals=False)

    fig = scatter_figure(compare(analyze_document(doc(["abcd", "X" * 512, "abce"], "m")),
                                 analyze_document(doc(["abcd", "abcd", "abcd"], "b"))))
    ax = fig.axes[0]
    assert "above 1.5 drawn at 1.5" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1 with CER above 1.5, drawn at 1.5"]
    assert ax.get_ylim()[1] < 1.6  # the runaway answer (CER 128) sits on the edge
    plt.close(fig)
    page = report.read_text(encoding="utf-8")
    assert "CER by slice" in page and "@font-face{font-family:'gemma-ocr Khmer'" in page


def test_fonts_cover_the_pages_scripts_with_small_subsets():
    from gemma_ocr.data.fonts import cjk_font
    from gemma_ocr.reports.webfonts import font_faces

    faces = font_faces("ខ្មែរ ក្រុម ៥៦៧ Invoice ∅ ␣ ⏎ →" + (" 發票號碼" if cjk_font() else ""))
    assert faces.missing == ""
    assert "'gemma-ocr Khmer'" in faces.sans and faces.sans.index("Khmer") < faces.sans.index("system-ui")
    assert len(faces.css) < 120_000  # subsets, not whole fonts (Noto Sans Khmer alone is 360 kB)
    assert font_faces("a 𓀀").missing == "𓀀"  # a hieroglyph: no font of the project has it, and the page says so
