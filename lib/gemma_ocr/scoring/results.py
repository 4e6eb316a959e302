"""The evaluation results document (``results/*.json``) and its scoring.

Layout (the seed's, extended; fields are only ever added)::

    {"overall_cer": .., "overall_f1": .., "total_samples": N, "timestamp": ISO-8601, "model_name": ..,
     "overall_cer_ci95": [low, high], "overall_f1_ci95": [low, high], "normalized_overall_*": ..,
     "character_unit": "codepoint", "normalization_profile": "seed", "normalization": "<what was applied>",
     "metrics": {raw: {...}, normalized: {...}, by_unit: {codepoint: .., grapheme: ..}, slices: {...},
                 confidence_interval: {method, resamples, seed, clustered_by, ...}, ...},
     "status_counts": {ok, empty, truncated, repetition, error},
     "samples": [{"image_path", "label", "prediction", "status", "cer_score", "f1_score",
                  "normalized_cer_score", "normalized_f1_score", ...}]}

``overall_cer``/``overall_f1`` are micro averages on the raw text in the file's ``character_unit`` (see
:mod:`gemma_ocr.scoring.metrics`); the ``normalized_*`` ones on the text after ``normalization_profile``. Both
units are reported side by side in ``metrics.by_unit``, the slices (:mod:`gemma_ocr.scoring.slices`) in
``metrics.slices``, the 95% bootstrap intervals (:mod:`gemma_ocr.scoring.bootstrap`) beside each micro figure.
Samples with status ``error`` (the request failed) are never scored as predictions; an answered status
with no prediction (``"status": "ok", "prediction": null``) is refused, never scored as an empty answer.
A figure is never computed from nothing: a document with no scored sample has ``overall_cer`` null,
``no_figures_reason`` saying why and ``complete`` false; any failed samples are named in ``failures``
(their count and the first one's reason). ``truncated`` (cut
at max_tokens) and ``repetition`` (a repetition loop; :mod:`gemma_ocr.scoring.degenerate` has the rule) are
answers, counted apart and scored.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gemma_ocr.scoring.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Bootstrap, micro_intervals
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.scoring.metrics import (CHARACTER_UNITS, DEFAULT_PROFILE, DEFAULT_UNIT, aggregate, check_profile, check_unit,
                               normalization_description, normalize_text, score_pairs)
from gemma_ocr.settings import FieldError
from gemma_ocr.scoring.slices import sample_slices, slice_figures

STATUS_OK, STATUS_EMPTY, STATUS_ERROR = "ok", "empty", "error"
STATUS_TRUNCATED, STATUS_REPETITION = "truncated", "repetition"
STATUSES = (STATUS_OK, STATUS_EMPTY, STATUS_TRUNCATED, STATUS_REPETITION, STATUS_ERROR)
ANSWERED = frozenset(STATUSES) - {STATUS_ERROR}  # a finished sample: kept on resume, scored
DEGENERATE = frozenset({STATUS_TRUNCATED, STATUS_REPETITION})  # answered, but cut or looping: counted apart
ProfileName = Literal["raw", "seed", "nfc", "nfkc", "caseless"]  # the keys of metrics.NORMALIZATION_PROFILES
UnitName = Literal["codepoint", "grapheme"]  # the keys of metrics.CHARACTER_UNITS


@dataclass
class ScoringConfig:
    """How a results file is scored: normalization, character unit, bootstrap intervals. Fields are the flags."""

    normalization: ProfileName = field(default=DEFAULT_PROFILE, metadata={"group": "scoring",
        "help": "normalization of the normalized figures: raw (none), seed (whitespace, ASCII/CJK punctuation and "
                "zero-width characters removed), nfc, nfkc or caseless (Unicode NFC / NFKC / NFKC+case folding, "
                "then seed)"})
    char_unit: UnitName = field(default=DEFAULT_UNIT, metadata={"group": "scoring",
        "help": "what one character is in the headline CER/F1: codepoint (Unicode code points, the seed's) or "
                "grapheme (extended grapheme clusters); both are reported side by side"})
    ci_resamples: int = field(default=DEFAULT_RESAMPLES, metadata={"group": "scoring",
        "help": "bootstrap resamples of the 95% intervals of micro CER and F1"})
    ci_seed: int = field(default=DEFAULT_SEED, metadata={"group": "scoring", "help": "seed of the bootstrap resampling"})

    def validate(self) -> None:
        check_profile(self.normalization)
        check_unit(self.char_unit)
        if isinstance(self.ci_resamples, bool) or self.ci_resamples < 1:
            raise FieldError("ci_resamples", f"must be a whole number >= 1, got {self.ci_resamples!r}")

    @property
    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.ci_resamples, self.ci_seed)


def sample_status(sample: dict[str, Any]) -> str:
    """A sample's status; files without the field count an empty prediction as ``empty``."""
    status = sample.get("status")
    if status:
        return status
    return STATUS_OK if (sample.get("prediction") or "").strip() else STATUS_EMPTY


def answer_problem(sample: dict[str, Any]) -> str:
    """Why ``sample`` cannot be scored as it stands, or "": an answered status (ok, truncated, repetition)
    whose prediction is not there (null) — a file edited or written by another tool."""
    status = sample.get("status")
    if status in (STATUS_OK, STATUS_TRUNCATED, STATUS_REPETITION) and not isinstance(sample.get("prediction"), str):
        shown = "null" if sample.get("prediction") is None else repr(sample["prediction"])
        return (f"has status {status!r} but prediction {shown}: it is not an answer to score; set "
                f"its status to 'error' (a failed request, retried on resume) or give its prediction")
    return ""


def failure_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """``{"count", "first": {index, image_path, error}}`` of the failed samples (status error), None when none."""
    failed = [s for s in samples if sample_status(s) == STATUS_ERROR]
    if not failed:
        return None
    first = failed[0]
    return {"count": len(failed), "first": {"index": first.get("index"), "image_path": first.get("image_path"),
                                            "error": first.get("error") or "no reason recorded"}}


def failure_text(failures: dict[str, Any] | None, total: int) -> str:
    """One line naming a document's failures: how many, and the first one's reason ("" when none)."""
    if not failures:
        return ""
    first = failures.get("first") or {}
    where = f"sample {first.get('index')}" + (f" ({first['image_path']})" if first.get("image_path") else "")
    return (f"{failures['count']} of {total} samples failed and are not scored; first, {where}: "
            f"{first.get('error') or 'no reason recorded'}")


def no_figures_reason(samples: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """Why a document has no CER ("" when it has one): no sample, every sample failed, or only empty references."""
    if not samples:
        return "no CER: the results hold no sample"
    if not scored(list(samples)):
        return f"no CER: no sample was scored (every one of the {len(samples)} failed: see failures)"
    if metrics["raw"]["cer_micro"] is None:
        return "no CER: every scored sample has an empty reference, where CER is undefined (F1 is given)"
    return ""


def scored(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples that count in metrics: everything but failed requests."""
    return [s for s in samples if sample_status(s) != STATUS_ERROR]


def clusters_of(samples: Sequence[dict[str, Any]]) -> tuple[list[Any] | None, str | None]:
    """(each sample's cluster for the bootstrap, what it is) where the data names a ``source`` for two or more
    of its pages or documents; (None, None) otherwise."""
    labels = [s.get("source") if s.get("source") not in (None, "") else None for s in samples]
    if len({c for c in labels if c is not None}) < 2:
        return None, None
    return labels, "source"


def interval_method(boot: Bootstrap, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the intervals of ``samples`` were drawn, as results files state it."""
    clusters, clustered_by = clusters_of(samples)
    units = len({c if c is not None else ("sample", i) for i, c in enumerate(clusters)}) if clusters else len(samples)
    return boot.describe(units, clustered_by)


def _figures(scores: dict[str, list], boot: Bootstrap | None, clusters: list | None) -> dict[str, dict[str, Any]]:
    """Aggregate figures of each list of scores, with their intervals when ``boot`` is given."""
    out = {k: aggregate(v).to_dict() for k, v in scores.items()}
    if boot is not None:
        for key, found in micro_intervals(scores, boot, clusters).items():
            out[key].update(found)
    return out


def score_samples(samples: list[dict[str, Any]], scoring: ScoringConfig | None = None,
                  intervals: bool = True) -> dict[str, Any]:
    """Write raw and normalized per-sample scores into ``samples`` (in place); return the overall metrics.

    ``intervals``: also the bootstrap intervals (``scoring.ci_resamples`` draws per figure; a run's intermediate
    saves leave them out).
    """
    scoring = scoring or ScoringConfig()
    scoring.validate()
    profile, unit = scoring.normalization, scoring.char_unit
    done = scored(samples)
    preds = [s.get("prediction") or "" for s in done]
    labels = [s.get("label") or "" for s in done]
    by_unit = {u: (score_pairs(preds, labels, unit=u), score_pairs(preds, labels, normalize=True, profile=profile, unit=u))
               for u in CHARACTER_UNITS}
    raw, norm = by_unit[unit]
    for s, r, n in zip(done, raw, norm):
        s["cer_score"], s["f1_score"] = r.cer, r.f1
        s["normalized_cer_score"], s["normalized_f1_score"] = n.cer, n.f1
    for s in samples:
        if sample_status(s) == STATUS_ERROR:
            for key in ("cer_score", "f1_score", "normalized_cer_score", "normalized_f1_score"):
                s[key] = None
    clusters, _ = clusters_of(done)
    boot = scoring.bootstrap if intervals and done else None
    keys = sample_slices(done, unit)
    metrics: dict[str, Any] = {
        **_figures({"raw": raw, "normalized": norm}, boot, clusters),
        "normalization": normalization_description(profile),
        "normalization_profile": profile,
        "character_unit": unit,
        "character_unit_description": CHARACTER_UNITS[unit],
        "by_unit": {u: {"description": CHARACTER_UNITS[u], "raw": aggregate(r).to_dict(),
                        "normalized": aggregate(n).to_dict()} for u, (r, n) in by_unit.items()},
        "slices": {"raw": slice_figures(raw, keys), "normalized": slice_figures(norm, keys)},
    }
    if boot is not None:
        metrics["confidence_interval"] = interval_method(boot, done)
    return metrics


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields of a results document from its metrics: overall figures, intervals, unit, normalization."""
    raw, norm = metrics["raw"], metrics["normalized"]
    out = {"overall_cer": raw["overall_cer"], "overall_f1": raw["overall_f1"],
           "normalized_overall_cer": norm["overall_cer"], "normalized_overall_f1": norm["overall_f1"]}
    if "cer_micro_ci95" in raw:
        out.update(overall_cer_ci95=raw["cer_micro_ci95"], overall_f1_ci95=raw["f1_micro_ci95"],
                   normalized_overall_cer_ci95=norm["cer_micro_ci95"], normalized_overall_f1_ci95=norm["f1_micro_ci95"])
    out.update(character_unit=metrics["character_unit"], normalization_profile=metrics["normalization_profile"],
               normalization=metrics["normalization"])
    return out


def build_document(samples: list[dict[str, Any]], model_name: str, scoring: ScoringConfig | None = None,
                   intervals: bool = True, **extra: Any) -> dict[str, Any]:
    """Score ``samples`` and wrap them in the results layout."""
    metrics = score_samples(samples, scoring, intervals)
    counts = Counter(sample_status(s) for s in samples)
    found = _accounting(samples, metrics, extra)
    return {
        **headline(metrics),
        "total_samples": len(samples),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "model_name": model_name,
        "status_counts": {k: counts.get(k, 0) for k in STATUSES},
        "metrics": metrics,
        **extra,
        **found,
        "samples": samples,
    }


def _accounting(samples: Sequence[dict[str, Any]], metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The fields that say what a document's figures rest on: ``failures`` (count and first reason) where samples
    failed, ``no_figures_reason`` where there is no CER, and ``complete`` false where nothing was scored."""
    out: dict[str, Any] = {}
    failures = failure_summary(samples)
    if failures:
        out["failures"] = failures
    reason = no_figures_reason(samples, metrics)
    if reason:
        out["no_figures_reason"] = reason
    if extra.get("complete") and not scored(list(samples)):
        out["complete"] = False  # a run with nothing scored is never finished: its samples are retried on resume
    return out


def check_results_document(document: Any, source: str = "results file") -> dict[str, Any]:
    """Fail with one line unless ``document`` has a ``samples`` list whose items carry label and prediction
    (strings, or null) and a known status, if any."""
    if not isinstance(document, dict) or not isinstance(document.get("samples"), list):
        raise GemmaOcrError(f"{source}: expected an object with a \"samples\" list (a results file written by evaluate.py)")
    for i, s in enumerate(document["samples"]):
        if not isinstance(s, dict) or "label" not in s or "prediction" not in s:
            raise GemmaOcrError(f"{source}: sample {i} needs \"label\" and \"prediction\" fields")
        for name in ("label", "prediction"):
            if s[name] is not None and not isinstance(s[name], str):
                raise GemmaOcrError(f"{source}: sample {i} field {name!r} is {s[name]!r}, not a string (fix the file)")
        if s.get("status") is not None and s["status"] not in STATUSES:
            raise GemmaOcrError(f"{source}: sample {i} field 'status' is {s['status']!r}, not one of "
                                f"{', '.join(STATUSES)} (fix the file)")
        problem = answer_problem(s)
        if problem:
            raise GemmaOcrError(f"{source}: sample {i} {problem}")
    return document


def check_unique_samples(doc: dict[str, Any], source: str, shown: int = 3, named: bool = True) -> None:
    """Refuse, in one line naming the first ``shown``, a results document with an image in more than one sample
    (pairing would keep one of them silently, a figure would count it twice); ``named``: and samples without an
    ``image_path`` (pairing needs one)."""
    where: dict[str, list[str]] = {}
    unnamed: list[str] = []
    for position, sample in enumerate(doc.get("samples") or []):
        index = sample.get("index") if isinstance(sample, dict) else None
        name = str(index if index is not None else f"#{position}")
        image = sample.get("image_path") if isinstance(sample, dict) else None
        if isinstance(image, str) and image.strip():
            where.setdefault(image, []).append(name)
        else:
            unnamed.append(name)
    if unnamed and named:
        raise GemmaOcrError(f"{source}: {len(unnamed)} samples name no image_path (indexes {', '.join(unnamed[:shown])}"
                            f"{', ...' if len(unnamed) > shown else ''}); samples are paired by image, so each needs "
                            f"one (compare results files written by core/evaluate.py)")
    repeats = [(image, found) for image, found in where.items() if len(found) > 1]
    if not repeats:
        return
    examples = "; ".join(f"{image} (indexes {', '.join(found)})" for image, found in repeats[:shown])
    more = f"; and {len(repeats) - shown} more" if len(repeats) > shown else ""
    images = "1 image is" if len(repeats) == 1 else f"{len(repeats)} images are"
    raise GemmaOcrError(f"{source}: {images} in more than one sample: {examples}{more}; a results file holds each "
                        f"image once (evaluate a data file without repeats again: core/evaluate.py refuses repeats)")


def rescore_normalized(document: Any, source: str = "results file", scoring: ScoringConfig | None = None) -> dict[str, Any]:
    """What count_score.py writes: normalized text and scores, with the original ones kept.

    Each sample gains ``normalized_label``/``normalized_prediction``; ``cer_score``/``f1_score`` become
    the normalized scores and the previous values move to ``original_cer_score``/``original_f1_score``.
    The top level gets normalized ``overall_cer``/``overall_f1`` (and their 95% intervals) and keeps the old
    as ``original_*``; ``normalized_metrics`` has the micro and macro figures, ``normalized_slices`` the slices.
    """
    scoring = scoring or ScoringConfig()
    scoring.validate()
    samples = check_results_document(document, source)["samples"]
    check_unique_samples(document, source, named=False)  # a repeated image would count twice in every figure
    out_samples = [dict(s) for s in samples]
    done = [i for i, s in enumerate(samples) if sample_status(s) != STATUS_ERROR]
    preds = [normalize_text(samples[i].get("prediction"), scoring.normalization) for i in done]
    labels = [normalize_text(samples[i].get("label"), scoring.normalization) for i in done]
    scores = score_pairs(preds, labels, unit=scoring.char_unit)
    for i, p, l, sc in zip(done, preds, labels, scores):
        o = out_samples[i]
        o["original_cer_score"], o["original_f1_score"] = o.get("cer_score"), o.get("f1_score")
        o["normalized_label"], o["normalized_prediction"] = l, p
        o["cer_score"], o["f1_score"] = sc.cer, sc.f1
    kept = [samples[i] for i in done]
    clusters, _ = clusters_of(kept)
    figures = _figures({"normalized": scores}, scoring.bootstrap if kept else None, clusters)["normalized"]
    out = {k: v for k, v in document.items() if k != "samples"}
    out["original_overall_cer"] = document.get("overall_cer")
    out["original_overall_f1"] = document.get("overall_f1")
    out["overall_cer"], out["overall_f1"] = figures["overall_cer"], figures["overall_f1"]
    out["overall_cer_ci95"], out["overall_f1_ci95"] = figures.get("cer_micro_ci95"), figures.get("f1_micro_ci95")
    out["total_samples"] = len(samples)
    out["normalized"] = True
    out["normalization"] = normalization_description(scoring.normalization)
    out["normalization_profile"] = scoring.normalization
    out["character_unit"] = scoring.char_unit
    out["normalized_metrics"] = figures
    out["normalized_slices"] = slice_figures(scores, sample_slices(kept, scoring.char_unit))
    if kept:
        out["confidence_interval"] = interval_method(scoring.bootstrap, kept)
    for key in ("failures", "no_figures_reason"):
        out.pop(key, None)  # the input's; recomputed on what is scored now
    out.update(_accounting(samples, {"raw": figures}, out))
    out["samples"] = out_samples
    return out


def figure_text(value: Any) -> str:
    """A figure as printed: 4 decimals, or "n/a" where there is none (nothing was measured)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def interval_text(ci: Any) -> str:
    """``[low, high]`` of a 95% interval as printed, or "" when there is none."""
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def method_text(method: dict[str, Any]) -> str:
    """One line: how a results file's intervals were drawn."""
    return (f"{method['confidence']:.0%} {method['method']} ({method['units']}), {method['resamples']} resamples, "
            f"seed {method['seed']}")
