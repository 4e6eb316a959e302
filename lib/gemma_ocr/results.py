"""The evaluation results document (``results/*.json``) and its scoring.

Layout (the seed's, extended)::

    {"overall_cer": .., "overall_f1": .., "total_samples": N, "timestamp": ISO-8601, "model_name": ..,
     "metrics": {raw: {...}, normalized: {...}}, "status_counts": {ok, empty, error},
     "samples": [{"image_path", "label", "prediction", "status", "cer_score", "f1_score",
                  "normalized_cer_score", "normalized_f1_score", ...}]}

``overall_cer``/``overall_f1`` are micro averages on the raw text (see :mod:`gemma_ocr.metrics`);
samples with status ``error`` (the request failed) are never scored as predictions.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from typing import Any

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.metrics import aggregate, normalization_description, normalize_text, score_pairs

STATUS_OK, STATUS_EMPTY, STATUS_ERROR = "ok", "empty", "error"


def sample_status(sample: dict[str, Any]) -> str:
    """A sample's status; files without the field count an empty prediction as ``empty``."""
    status = sample.get("status")
    if status:
        return status
    return STATUS_OK if (sample.get("prediction") or "").strip() else STATUS_EMPTY


def scored(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples that count in metrics: everything but failed requests."""
    return [s for s in samples if sample_status(s) != STATUS_ERROR]


def score_samples(samples: list[dict[str, Any]], nfkc: bool = False) -> dict[str, Any]:
    """Write raw and normalized per-sample scores into ``samples`` (in place); return the overall metrics."""
    done = scored(samples)
    preds = [s.get("prediction") or "" for s in done]
    labels = [s.get("label") or "" for s in done]
    raw = score_pairs(preds, labels)
    norm = score_pairs(preds, labels, normalize=True, nfkc=nfkc)
    for s, r, n in zip(done, raw, norm):
        s["cer_score"], s["f1_score"] = r.cer, r.f1
        s["normalized_cer_score"], s["normalized_f1_score"] = n.cer, n.f1
    for s in samples:
        if sample_status(s) == STATUS_ERROR:
            for key in ("cer_score", "f1_score", "normalized_cer_score", "normalized_f1_score"):
                s[key] = None
    return {
        "raw": aggregate(raw).to_dict(),
        "normalized": aggregate(norm).to_dict(),
        "normalization": normalization_description(nfkc),
    }


def build_document(samples: list[dict[str, Any]], model_name: str, nfkc: bool = False, **extra: Any) -> dict[str, Any]:
    """Score ``samples`` and wrap them in the results layout."""
    metrics = score_samples(samples, nfkc=nfkc)
    counts = Counter(sample_status(s) for s in samples)
    return {
        "overall_cer": metrics["raw"]["overall_cer"],
        "overall_f1": metrics["raw"]["overall_f1"],
        "normalized_overall_cer": metrics["normalized"]["overall_cer"],
        "normalized_overall_f1": metrics["normalized"]["overall_f1"],
        "total_samples": len(samples),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "model_name": model_name,
        "status_counts": {k: counts.get(k, 0) for k in (STATUS_OK, STATUS_EMPTY, STATUS_ERROR)},
        "metrics": metrics,
        **extra,
        "samples": samples,
    }


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
        if s.get("status") is not None and s["status"] not in (STATUS_OK, STATUS_EMPTY, STATUS_ERROR):
            raise GemmaOcrError(f"{source}: sample {i} field 'status' is {s['status']!r}, not one of "
                                f"{STATUS_OK}, {STATUS_EMPTY}, {STATUS_ERROR} (fix the file)")
    return document


def rescore_normalized(document: Any, source: str = "results file", nfkc: bool = False) -> dict[str, Any]:
    """What count_score.py writes: normalized text and scores, with the original ones kept.

    Each sample gains ``normalized_label``/``normalized_prediction``; ``cer_score``/``f1_score`` become
    the normalized scores and the previous values move to ``original_cer_score``/``original_f1_score``.
    The top level gets normalized ``overall_cer``/``overall_f1`` and keeps the old as ``original_*``.
    """
    samples = check_results_document(document, source)["samples"]
    out_samples = [dict(s) for s in samples]
    done = [i for i, s in enumerate(samples) if sample_status(s) != STATUS_ERROR]
    preds = [normalize_text(samples[i].get("prediction"), nfkc) for i in done]
    labels = [normalize_text(samples[i].get("label"), nfkc) for i in done]
    scores = score_pairs(preds, labels)
    for i, p, l, sc in zip(done, preds, labels, scores):
        o = out_samples[i]
        o["original_cer_score"], o["original_f1_score"] = o.get("cer_score"), o.get("f1_score")
        o["normalized_label"], o["normalized_prediction"] = l, p
        o["cer_score"], o["f1_score"] = sc.cer, sc.f1
    overall = aggregate(scores)
    out = {k: v for k, v in document.items() if k != "samples"}
    out["original_overall_cer"] = document.get("overall_cer")
    out["original_overall_f1"] = document.get("overall_f1")
    out["overall_cer"], out["overall_f1"] = overall.overall_cer, overall.overall_f1
    out["total_samples"] = len(samples)
    out["normalized"] = True
    out["normalization"] = normalization_description(nfkc)
    out["normalized_metrics"] = overall.to_dict()
    out["samples"] = out_samples
    return out
