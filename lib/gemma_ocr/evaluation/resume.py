"""Resuming a run: what of an earlier results file a rerun keeps, and which files it refuses.

Samples already answered (``ok``, ``empty``, truncated or repetition) are kept as they are, ``error`` and missing
ones are requested again. A results file of another model or other settings is refused, and so is one that holds
samples this run would not keep (a smaller ``top_k``, a changed data file): a rerun never shrinks a results file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemma_ocr.data.records import OcrRecord
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.evaluation.settings import EvalConfig
from gemma_ocr.io import read_json
from gemma_ocr.scoring.results import ANSWERED, STATUSES, answer_problem, sample_status


def _key(index: int, record: OcrRecord) -> tuple[int, str, str]:
    return (index, record.image_path, record.text)


def _settings_differ(doc: dict[str, Any], cfg: EvalConfig, generation: bool = True,
                     engine: dict[str, Any] | None = None) -> str:
    """What of ``cfg`` differs from the run that wrote ``doc`` (data file; the OCR ``engine``'s version and
    settings; instruction and max tokens when ``generation``), or ""."""
    before = doc.get("data_file")
    if before and Path(before).resolve() != Path(cfg.data_file).resolve():
        return f"data file {before}, not {cfg.data_file}"
    if engine is not None and doc.get("engine") not in (None, engine):
        return f"engine {doc['engine']}, not {engine}"
    if not generation:
        return ""
    if "instruction" in doc and doc["instruction"] != cfg.instruction:
        return f"instruction {doc['instruction']!r}, not {cfg.instruction!r}"
    generation = doc.get("generation") or {}
    tokens = generation.get("max_tokens")
    if tokens is not None and tokens != cfg.max_tokens:
        return f"{cfg.flag('max_tokens') or 'max_tokens'} {tokens}, not {cfg.max_tokens}"
    retry = generation.get("retry_temperature")
    if "retry_temperature" in generation and retry != cfg.retry_temperature:
        return f"{cfg.flag('retry_temperature') or 'retry_temperature'} {retry}, not {cfg.retry_temperature}"
    return ""


_DOCUMENT_FIELDS = {"model_name": str, "data_file": str, "instruction": str, "generation": dict, "engine": dict}


def read_results(path: Path, fix: str) -> tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]:
    """A results file of evaluate.py and its samples by index, every field a resume relies on checked.

    A malformed field is one line naming the file, the sample and the field, ending in ``fix``.
    """
    doc = read_json(path, "results file")
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), list):
        raise GemmaOcrError(f"{path}: not a results file of evaluate.py (no \"samples\" list); {fix}")
    for key, kind in _DOCUMENT_FIELDS.items():
        if doc.get(key) is not None and not isinstance(doc[key], kind):
            raise GemmaOcrError(f"{path}: field {key!r} is {doc[key]!r}, not a {kind.__name__}; fix the file, or {fix}")
    samples: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()
    for position, sample in enumerate(doc["samples"]):
        where = f"{path}: sample {position}"
        if not isinstance(sample, dict):
            raise GemmaOcrError(f"{where} is {type(sample).__name__}, not an object; fix the file, or {fix}")
        index = sample.get("index", position)
        problem = ""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            problem = f"field 'index' is {index!r}, not a whole number >= 0"
        elif index in seen:
            problem = f"repeats index {index}"
        elif not isinstance(sample.get("image_path"), str):
            problem = f"field 'image_path' is {sample.get('image_path')!r}, not a path"
        else:
            for name in ("label", "prediction", "error"):
                if sample.get(name) is not None and not isinstance(sample[name], str):
                    problem = f"field {name!r} is {sample[name]!r}, not a string"
            if sample.get("status") is not None and sample["status"] not in STATUSES:
                problem = f"field 'status' is {sample['status']!r}, not one of {', '.join(STATUSES)}"
            problem = problem or answer_problem(sample)
        if problem:
            raise GemmaOcrError(f"{where} {problem}; fix the file, or {fix}")
        seen.add(index)
        samples.append((index, sample))
    return doc, samples


def _shrinking(path: Path, lost: list[tuple[int, dict[str, Any]]], selected: Sequence[OcrRecord], dataset_size: int,
               doc: dict[str, Any], cfg: EvalConfig) -> GemmaOcrError:
    """The refusal of a run that would drop the ``lost`` samples of ``path``."""
    hint = cfg.start_over_hint()
    changed = [(i, s) for i, s in lost if i < len(selected)]
    need = max(i for i, _ in lost) + 1
    if changed or need > dataset_size:
        i, s = (changed or lost)[0]
        return GemmaOcrError(f"{path} holds {len(lost)} samples that are not in {cfg.data_file} as it is now (e.g. sample "
                             f"{i}: {s['image_path']}); the data file changed since that run: {hint}")
    earlier = doc.get("top_k", need)
    want = "None" if earlier is None or need >= dataset_size else str(max(need, earlier if isinstance(earlier, int) else 0))
    top_k = cfg.flag("top_k") or "top_k"
    return GemmaOcrError(f"{path} holds {len(lost)} samples beyond the first {len(selected)} that {top_k} {cfg.top_k} "
                         f"selects, and a rerun never drops saved samples: rerun with {top_k} {want} to resume it, or {hint}")


def resumable_samples(path: Path, model_name: str, cfg: EvalConfig, selected: Sequence[OcrRecord], dataset_size: int,
               generation: bool = True, engine: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """The finished samples (all but errors) of an earlier run into ``path`` to keep, by index.

    Refused in one line: a file of another model or settings, and one holding samples this run would not keep.
    """
    if not cfg.resume or not path.is_file():
        return {}
    hint = cfg.start_over_hint()
    doc, samples = read_results(path, hint)
    previous = doc.get("model_name")
    if previous and previous != model_name:
        raise GemmaOcrError(f"{path} holds results of model {previous!r}, not {model_name!r}; {hint}")
    differs = _settings_differ(doc, cfg, generation, engine)
    if differs:
        raise GemmaOcrError(f"{path} holds results made with {differs}; rerun with the same settings to resume, or {hint}")
    wanted = {_key(i, r) for i, r in enumerate(selected)}
    lost = [(i, s) for i, s in samples if (i, s["image_path"], s.get("label") or "") not in wanted]
    if lost:
        raise _shrinking(path, lost, selected, dataset_size, doc, cfg)
    return {i: s for i, s in samples if sample_status(s) in ANSWERED}
