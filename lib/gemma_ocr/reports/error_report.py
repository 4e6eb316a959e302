"""The error report of an evaluation: ``report.html`` (self-contained), ``summary.json`` and PNG plots.

Built from :mod:`gemma_ocr.reports.error_analysis`; see there for what each figure means. The page carries its own
fonts for the scripts it shows (:mod:`gemma_ocr.reports.webfonts`: Khmer and CJK draw without a system font) and
wraps long transcriptions inside the page. Loads matplotlib: :mod:`gemma_ocr.commands.error_analysis` imports
this module only once a report is asked for.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from rapidfuzz.distance import Levenshtein

from gemma_ocr.data.images import open_image
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import atomic_write_json, atomic_write_text
from gemma_ocr.reports.error_analysis import MISSING, Comparison, ErrorAnalysis, SampleErrors, shown_char, slice_table
from gemma_ocr.reports.plotting import save_png, use_font_for
from gemma_ocr.reports.webfonts import font_faces
from gemma_ocr.scoring.answers import AnswerProfile, answer_profile
from gemma_ocr.scoring.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from gemma_ocr.scoring.comparison import paired_result
from gemma_ocr.scoring.metrics import CHARACTER_UNITS, as_units, split_units
from gemma_ocr.scoring.slices import slice_order

THUMBNAIL_SIZE = (720, 96)  # a text line's thumbnail fits in this box
MODEL_COLOUR, BASELINE_COLOUR = "tab:blue", "tab:gray"
TOP_CONFUSIONS = 20
TOP_CHARACTERS = 20
SCATTER_LIMIT = 1.5  # per-sample CER above this is drawn at the edge of the scatter, and said so


@dataclass
class ErrorReport:
    """What :func:`write_report` wrote."""

    output_dir: Path
    html: Path
    summary: Path
    plots: list[Path]
    summary_data: dict[str, Any]


def write_report(analysis: ErrorAnalysis, output_dir: str | os.PathLike[str], worst: int = 30,
                 comparison: Comparison | None = None) -> ErrorReport:
    """Write the report of ``analysis`` (and its ``comparison`` with a baseline) into ``output_dir``."""
    matplotlib.use("Agg")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(analysis, worst, comparison)
    plots = [p for p in (_cer_histogram(analysis, comparison, out / "cer_histogram.png"),
                         _cer_by_length(analysis, comparison, out / "cer_by_length.png"),
                         _confusions_plot(analysis, out / "confusions.png"),
                         _confidence_plot(analysis, out / "cer_vs_confidence.png"),
                         _scatter(comparison, out / "cer_vs_baseline.png") if comparison else None) if p]
    summary_path = atomic_write_json(out / "summary.json", summary)
    page = atomic_write_text(out / "report.html", _html(analysis, summary, plots, worst, comparison))
    return ErrorReport(out, page, summary_path, plots, summary)


def summarize(analysis: ErrorAnalysis, worst: int, comparison: Comparison | None = None) -> dict[str, Any]:
    """The report's figures as JSON-ready data."""
    data: dict[str, Any] = {
        "model_name": analysis.model_name,
        "results_file": analysis.source,
        "text": analysis.text,
        "character_unit": analysis.unit,
        "samples": len(analysis.samples) + len(analysis.failed),
        "scored_samples": len(analysis.samples),
        "empty_references": len(analysis.samples) - len(analysis.scored),
        "failed_samples": len(analysis.failed),
        "status_counts": analysis.status_counts(),
        "cer_micro": analysis.cer_micro,
        "totals": analysis.totals(),
        "confusions": analysis.confusions(100),
        "characters": analysis.characters(100),
        "cer_by_length": analysis.by_length(),
        "slices": analysis.slices(),
        "worst": [_sample_row(s) for s in analysis.worst(worst)],
        "answers": profile_of(analysis).to_dict(),
    }
    if comparison is not None:
        data["baseline"] = {"model_name": comparison.baseline.model_name, "results_file": comparison.baseline.source,
                            "cer_micro": comparison.baseline.cer_micro, **comparison.counts(),
                            "answers": profile_of(comparison.baseline).to_dict(),
                            "paired": paired_figures(comparison),
                            "regressions": [{**_sample_row(m), "baseline_cer": b.cer, "baseline_prediction": b.prediction}
                                            for m, b in comparison.regressions(worst)]}
    return data


def profile_of(analysis: ErrorAnalysis) -> AnswerProfile:
    """How the analysed model answers (distinct, constant, cut at max_tokens): :mod:`gemma_ocr.scoring.answers`."""
    return answer_profile([s.prediction for s in analysis.samples], [s.reference for s in analysis.samples],
                          analysis.truncated)


def paired_figures(comparison: Comparison, n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED) -> dict[str, Any] | None:
    """The CER difference on the matched samples with its paired bootstrap interval and significance tests,
    overall and per slice (:mod:`gemma_ocr.scoring.comparison`); None when no sample has a reference to compare."""
    pairs = comparison.paired_samples()
    if not len(pairs):
        return None
    slices = {}
    for dimension, names in pairs.slices.items():
        slices[dimension] = {name: paired_result(pairs.subset([i for i, k in enumerate(names) if k == name]),
                                                 n_resamples, seed).to_dict() for name in slice_order(dimension, names)}
    return {**paired_result(pairs, n_resamples, seed).to_dict(), "slices": slices}


def _sample_row(s: SampleErrors) -> dict[str, Any]:
    return {"index": s.index, "image_path": s.image_path, "reference": s.reference, "prediction": s.prediction,
            "cer": s.cer, "edits": s.edits, "status": s.status}


# ------------------------------------------------------------------------------------------------ plots

def _cer_histogram(analysis: ErrorAnalysis, comparison: Comparison | None, path: Path) -> Path | None:
    if not analysis.scored:
        return None
    bins = [i / 20 for i in range(21)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = [(analysis.model_name, [min(s.cer, 1.05) for s in analysis.scored], MODEL_COLOUR)]
    if comparison is not None:
        series.insert(0, (f"baseline: {comparison.baseline.model_name}", [min(b.cer, 1.05) for _, b in comparison.pairs],
                          BASELINE_COLOUR))
    for label, values, colour in series:
        ax.hist(values, bins=bins + [1.1], alpha=0.6, label=label, color=colour)
    ax.set_xlabel("CER per sample (above 1.0 shown at 1.05)")
    ax.set_ylabel("samples")
    ax.set_title("Distribution of sample CER")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _cer_by_length(analysis: ErrorAnalysis, comparison: Comparison | None, path: Path) -> Path | None:
    rows = [r for r in analysis.by_length() if r["samples"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = range(len(rows))
    width = 0.4 if comparison else 0.8
    ax.bar([i + (width / 2 if comparison else 0) for i in x], [r["cer_micro"] for r in rows], width,
           label=analysis.model_name, color=MODEL_COLOUR)
    if comparison is not None:
        base = {r["length"]: r["cer_micro"] for r in comparison.baseline.by_length()}
        ax.bar([i - width / 2 for i in x], [base.get(r["length"]) or 0.0 for r in rows], width,
               label=f"baseline: {comparison.baseline.model_name}", color=BASELINE_COLOUR)
        ax.legend(fontsize=8)
    ax.set_xticks(list(x), [f"{r['length']}\n({r['samples']})" for r in rows])
    ax.set_xlabel("reference length in characters (samples)")
    ax.set_ylabel("CER (micro)")
    ax.set_title("CER by line length")
    return save_png(fig, path)


def _confusions_plot(analysis: ErrorAnalysis, path: Path) -> Path | None:
    top = analysis.confusions(15)
    if not top:
        return None
    labels = [f"{shown_char(c['reference'])} → {shown_char(c['prediction'])}" for c in reversed(top)]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(top) + 1.2))
    colours = {"substitution": "tab:red", "deletion": "tab:purple", "insertion": "tab:orange"}
    ax.barh(labels, [c["count"] for c in reversed(top)], color=[colours[c["kind"]] for c in reversed(top)])
    use_font_for("".join(labels), ax.get_yticklabels())
    ax.set_xlabel("count (red: misread, purple: missed, orange: extra)")
    ax.set_title("Most frequent character errors (reference → prediction)")
    return save_png(fig, path)


STATUS_COLOURS = {"ok": MODEL_COLOUR, "empty": "tab:gray", "truncated": "tab:orange", "repetition": "tab:red"}


def _confidence_plot(analysis: ErrorAnalysis, path: Path) -> Path | None:
    """Per sample: CER against the probability of its least confident token (where the server gave them)."""
    points = analysis.confidence()
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for status, colour in STATUS_COLOURS.items():
        chosen = [(p, c) for p, c, s in points if s == status]
        if chosen:
            ax.scatter([p for p, _ in chosen], [min(c, 1.5) for _, c in chosen], s=12, alpha=0.6, color=colour,
                       label=f"{status} ({len(chosen)})")
    ax.set_xscale("log")
    ax.set_xlabel("probability of the least confident token (log scale)")
    ax.set_ylabel("CER (above 1.5 shown at 1.5)")
    ax.set_title("CER against confidence: low-confidence lines are the ones to check")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _scatter(comparison: Comparison, path: Path) -> Path | None:
    return save_png(scatter_figure(comparison), path) if comparison.pairs else None


def scatter_figure(comparison: Comparison) -> Any:
    """Per-sample CER of the model against the baseline's; samples beyond :data:`SCATTER_LIMIT` on the edge, marked."""
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    limit = SCATTER_LIMIT
    inside = [(b.cer, m.cer) for m, b in comparison.pairs if b.cer <= limit and m.cer <= limit]
    beyond = [(min(b.cer, limit), min(m.cer, limit)) for m, b in comparison.pairs if b.cer > limit or m.cer > limit]
    if inside:
        ax.scatter(*zip(*inside), s=12, alpha=0.6, color=MODEL_COLOUR)
    if beyond:  # CER has no upper bound (a long hallucination): such samples sit on the edge, marked
        ax.scatter(*zip(*beyond), s=28, marker="^", color="tab:red",
                   label=f"{len(beyond)} with CER above {limit:g}, drawn at {limit:g}")
        ax.legend(fontsize=8, loc="upper left")
    top = max([v for point in inside + beyond for v in point] + [0.05]) * 1.05
    ax.plot([0, top], [0, top], color="grey", linewidth=1)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    clamp = f" (values above {limit:g} drawn at {limit:g})" if beyond else ""
    ax.set_xlabel(f"baseline CER ({comparison.baseline.model_name}){clamp}")
    ax.set_ylabel("model CER")
    ax.set_title("Per sample: below the line is better")
    return fig


# ------------------------------------------------------------------------------------------------ html

# Long transcriptions (a model answering 512 tokens of one word) wrap inside their cell instead of widening the page.
STYLE = """
body{font-family:%(sans)s;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;max-width:100%%}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top;overflow-wrap:anywhere}th{background:#f4f4f4}
.num{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:normal}
.text{font-family:%(mono)s;white-space:pre-wrap;overflow-wrap:anywhere}.bad{background:#ffc9c9}.extra{background:#ffe3a3}
img.line{max-width:min(720px,100%%);max-height:96px;border:1px solid #eee}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.plots img{width:calc(50%% - 6px);min-width:min(420px,100%%);max-width:100%%;height:auto}
"""


def _marked(reference: str, prediction: str, unit: str = "codepoint") -> tuple[str, str]:
    """HTML of both texts, the characters (in ``unit``) in an edit highlighted (misread/missed in red, extra in amber)."""
    ref_units, pred_units = split_units(reference, unit), split_units(prediction, unit)
    ref, pred = [], []
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(*as_units([reference, prediction], unit)):
        r, p = html.escape("".join(ref_units[i1:i2])), html.escape("".join(pred_units[j1:j2]))
        if tag == "equal":
            ref.append(r)
            pred.append(p)
        elif tag == "replace":
            ref.append(f'<span class="bad">{r}</span>')
            pred.append(f'<span class="bad">{p}</span>')
        elif tag == "delete":
            ref.append(f'<span class="bad">{r}</span>')
        else:
            pred.append(f'<span class="extra">{p}</span>')
    return "".join(ref), "".join(pred)


def _thumbnail(path: str) -> str:
    """The image as an embedded PNG thumbnail, or a note when it cannot be read."""
    try:
        image = open_image(path)
    except GemmaOcrError as e:
        return f'<span class="muted">{html.escape(str(e))}</span>'
    image.thumbnail(THUMBNAIL_SIZE)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f'<img class="line" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sample_rows(samples: list[tuple[SampleErrors, SampleErrors | None]]) -> list[list[str]]:
    rows = []
    for s, base in samples:
        ref, pred = _marked(s.reference, s.prediction, s.unit)
        texts = f'<div class="text">{ref or MISSING}</div><div class="text">{pred or MISSING}</div>'
        if base is not None:
            texts += f'<div class="text muted">baseline: {html.escape(base.prediction) or MISSING}</div>'
        cer = f"{s.cer:.3f}" + (f"<br><span class=muted>was {base.cer:.3f}</span>" if base is not None else "")
        if s.status != "ok":
            cer += f"<br><span class=muted>{html.escape(s.status)}</span>"
        rows.append([str(s.index), _thumbnail(s.image_path) + f'<div class="muted">{html.escape(s.image_path)}</div>',
                     texts, cer])
    return rows


def _html(analysis: ErrorAnalysis, summary: dict[str, Any], plots: list[Path], worst: int,
          comparison: Comparison | None) -> str:
    e = html.escape
    totals = summary["totals"]
    parts = [f"<h1>Errors of {e(analysis.model_name)}</h1>",
             f"<p class=muted>{e(analysis.source)} · text compared: {e(analysis.text)} · characters: "
             f"{e(CHARACTER_UNITS[analysis.unit])}</p>",
             _table(["samples", "scored", "empty references", "failed requests", "reference chars", "edits",
                     "CER (micro)", "misread", "missed", "extra"],
                    [[str(summary["samples"]), str(summary["scored_samples"]), str(summary["empty_references"]),
                      str(summary["failed_samples"]), str(totals["reference_chars"]), str(totals["edits"]),
                      _cer(summary["cer_micro"]) or "n/a", str(totals["substitutions"]), str(totals["deletions"]),
                      str(totals["insertions"])]], numeric=set(range(10))),
             _table(list(summary["status_counts"]), [[str(n) for n in summary["status_counts"].values()]],
                    numeric=set(range(len(summary["status_counts"])))),
             '<p class=muted>truncated: cut at max_tokens; repetition: caught in a repetition loop; both are '
             'scored as they are (gemma_ocr.scoring.degenerate states the rule)</p>']
    for who, flags in ((analysis.model_name, summary["answers"]["flags"]),
                       *(((summary["baseline"]["model_name"], summary["baseline"]["answers"]["flags"]),)
                         if comparison is not None else ())):
        parts.extend(f"<p class=bad>Warning: {e(who)} gives a {e(flag)}; its CER says little about reading.</p>"
                     if flag.startswith("constant") else f"<p class=bad>Warning: {e(who)}: {e(flag)}.</p>"
                     for flag in flags)
    if comparison is not None:
        c = summary["baseline"]
        parts.append(f"<h2>Against the baseline {e(c['model_name'])}</h2>")
        parts.append(_table(["matched samples", "better", "worse", "same", "not in baseline", "baseline CER", "CER"],
                            [[str(c["matched"]), str(c["better"]), str(c["worse"]), str(c["same"]), str(c["unmatched"]),
                              _cer(c["cer_micro"]) or "n/a", _cer(summary["cer_micro"]) or "n/a"]],
                            numeric=set(range(7))))
        if c.get("paired"):
            parts.append(_paired_html(c["paired"], c["model_name"]))
    parts.append('<div class="plots">' + "".join(
        f'<img alt="{e(plot.stem)}" src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">'
        for plot in plots) + "</div>")
    parts.append("<h2>Most frequent character errors</h2>")
    parts.append(_table(["reference", "prediction", "kind", "count"],
                        [[f'<span class="text">{e(shown_char(c["reference"]))}</span>',
                          f'<span class="text">{e(shown_char(c["prediction"]))}</span>', c["kind"], str(c["count"])]
                         for c in summary["confusions"][:TOP_CONFUSIONS]], numeric={3}))
    parts.append("<h2>Characters most often missed or misread</h2>")
    parts.append(_table(["character", "U+", "in references", "errors", "error rate"],
                        [[f'<span class="text">{e(shown_char(r["char"]))}</span>', " ".join(f"{ord(c):04X}" for c in r["char"]),
                          str(r["occurrences"]), str(r["errors"]), f"{r['error_rate']:.3f}"]
                         for r in summary["characters"][:TOP_CHARACTERS]], numeric={2, 3, 4}))
    parts.append(_slices_html(summary["slices"], comparison))
    base_of = {m.index: b for m, b in comparison.pairs} if comparison else {}
    worst_samples = analysis.worst(worst)
    parts.append(f"<h2>The {len(worst_samples)} worst samples</h2><p class=muted>reference above, prediction below; "
                 f"<span class=bad>misread or missed</span>, <span class=extra>extra</span></p>")
    parts.append(_table(["#", "image", "reference / prediction", "CER"],
                        _sample_rows([(s, base_of.get(s.index)) for s in worst_samples]), numeric={0, 3}))
    if comparison is not None:
        regressions = comparison.regressions(worst)
        parts.append(f"<h2>Largest regressions against the baseline ({len(regressions)} shown)</h2>")
        parts.append(_table(["#", "image", "reference / prediction", "CER"], _sample_rows(regressions), numeric={0, 3}))
    if analysis.failed:
        parts.append(f"<h2>Failed requests ({len(analysis.failed)}, not scored)</h2>")
        parts.append(_table(["#", "image", "error"], [[str(s.get("index", "")), e(str(s.get("image_path", ""))),
                                                       e(str(s.get("error", "")))] for s in analysis.failed[:worst]]))
    return _page(f"Errors of {analysis.model_name}", "\n".join(parts))


def _page(title: str, body: str) -> str:
    """The whole page: ``body`` with the fonts its characters need embedded, and a note of any they lack."""
    shown = html.unescape(re.sub(r"<[^>]*>", " ", body))  # the text a reader sees (tags and data URLs left out)
    faces = font_faces(shown + title)
    lacking = (f'<p class=muted>No font of the report has a glyph for: <span class="text">{html.escape(faces.missing)}'
               f"</span></p>") if faces.missing else ""
    style = faces.css + STYLE % {"sans": faces.sans, "mono": faces.mono}
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>\n"
            f"{body}\n{lacking}\n")


def _cer(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _slices_html(slices: dict[str, list[dict[str, Any]]], comparison: Comparison | None) -> str:
    """The CER per script, line length and source (with the baseline's on the same samples when comparing)."""
    base = slice_table([b for _, b in comparison.pairs]) if comparison is not None else {}
    titles = {"script": "script", "length": "reference length (characters)", "source": "source"}
    parts = ["<h2>CER by slice</h2><p class=muted>each sample in one slice of each table, by its reference as the "
             "data has it; the slices of a table add up to the whole</p>"]
    for dimension, rows in slices.items():
        theirs = {r["slice"]: r for r in base.get(dimension, [])}
        headers = [titles.get(dimension, dimension), "samples", "reference chars", "edits", "CER (micro)"]
        if comparison is not None:
            headers.append(f"baseline CER ({html.escape(comparison.baseline.model_name)}, matched samples)")
        body = []
        for r in rows:
            row = [html.escape(r["slice"]), str(r["samples"]), str(r["reference_chars"]), str(r["edits"]), _cer(r["cer_micro"])]
            if comparison is not None:
                row.append(_cer((theirs.get(r["slice"]) or {}).get("cer_micro")))
            body.append(row)
        parts.append(_table(headers, body, numeric=set(range(1, len(headers)))))
    return "\n".join(parts)


def _paired_html(paired: dict[str, Any], baseline: str) -> str:
    """The significance of the difference with the baseline, overall and per slice."""
    cer, test = paired["cer"], paired["test"]
    headers = ["samples", f"baseline CER ({html.escape(baseline)})", "CER", "difference", "95% interval",
               "p (permutation)", "p (sign test)", "better / worse / same"]

    def row(label: str, r: dict[str, Any]) -> list[str]:
        c, t = r["cer"], r["test"]
        return [label, str(c["samples"]), f"{c['baseline_cer']:.4f}", f"{c['candidate_cer']:.4f}",
                f"{c['difference']:+.4f}", f"[{c['low']:+.4f}, {c['high']:+.4f}]", f"{t['p_value']:.4f}",
                f"{t['sign_test_p']:.4f}", f"{r['better']} / {r['worse']} / {r['same']}"]

    rows = [row("all", paired)] + [row(f"{dimension} {html.escape(name)}", r)
                                   for dimension, slices in paired["slices"].items() for name, r in slices.items()]
    verdict = ("the interval excludes 0" if cer["excludes_zero"] else "the interval includes 0: no difference shown")
    return (f"<p>On the {cer['samples']} matched samples with a reference: CER difference {cer['difference']:+.4f} "
            f"({verdict}). {html.escape(cer['method'])}, {cer['n_resamples']} resamples, seed {cer['seed']}; "
            f"{html.escape(test['method'])}; {html.escape(test['sign_test_method'])}. Not corrected for the several "
            f"slices.</p>" + _table(["", *headers], rows, numeric=set(range(1, len(headers) + 1))))
