#!/usr/bin/env python
"""The OCR engines users would pick instead, scored with the project's own metrics on the project's data.

Renders synthetic Latin lines (the default data: gemma_ocr.data.synthetic, Latin only) and held-out Khmer-digit
images (gemma_ocr.khmer_digits.generator, the CNN baseline's held-out seed), then evaluates each engine through
``gemma_ocr.evaluation.run.evaluate`` (the same results files as a served model) and prints CER with its 95%
interval, Khmer character and sequence accuracy, images per second and CPU seconds (this process and its
children, so Tesseract's processes count). Engines that are not installed are skipped, named.

    python benchmarks/engines_accuracy.py                         # --latin 200 --khmer 500 --workers 2
    python benchmarks/engines_accuracy.py --engines tesseract --khmer 2000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gemma_ocr.cli import run  # noqa: E402

ENGINE_SETTINGS = {  # engine -> (settings for Latin lines, settings for Khmer digits)
    "tesseract": ({"backend": "tesseract", "tesseract_lang": "eng", "psm": 7},
                  {"backend": "tesseract", "tesseract_lang": "khm", "psm": 7}),
    "rapidocr": ({"backend": "rapidocr"}, {"backend": "rapidocr"}),
}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _data(work: Path, n_latin: int, n_khmer: int) -> dict[str, Path]:
    from gemma_ocr.data.records import load_raw_records, write_records
    from gemma_ocr.data.synthetic import SyntheticConfig, generate_dataset
    from gemma_ocr.khmer_digits.generator import GeneratorConfig, export_ocr_json
    from gemma_ocr.khmer_digits.generator import generate_dataset as generate_khmer

    latin = work / "latin" / "ocr_test.json"
    if not latin.is_file():
        generate_dataset(latin.parent, SyntheticConfig(n_samples=n_latin, seed=7, scripts=("latin",)))
        write_records(load_raw_records(latin.parent / "ocr.json"), latin)
    khmer_meta = work / "khmer" / "metadata.yaml"
    if not khmer_meta.is_file():
        generate_khmer(khmer_meta.parent, GeneratorConfig(n_train=0, n_val=n_khmer, seed=20260))
    return {"latin": latin, "khmer": export_ocr_json(khmer_meta, work / "khmer" / "ocr_test.json", split="val")}


def _khmer_accuracy(doc: dict) -> tuple[float, float]:
    """Character accuracy (1 - micro CER, floored at 0) and sequence accuracy (exact lines) of a results document."""
    samples = [s for s in doc["samples"] if s["status"] != "error"]
    exact = sum((s["prediction"] or "") == s["label"] for s in samples) / max(len(samples), 1)
    return max(0.0, 1.0 - doc["overall_cer"]), exact


def main() -> int:
    from gemma_ocr.evaluation.engines import RAPIDOCR, TESSERACT
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.evaluation.settings import EvalConfig
    from gemma_ocr.evaluation.run import evaluate

    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default="experiments/engines_benchmark")
    p.add_argument("--latin", type=int, default=200, help="synthetic Latin lines")
    p.add_argument("--khmer", type=int, default=500, help="held-out Khmer-digit images")
    p.add_argument("--workers", type=int, default=2, help="tesseract processes side by side")
    p.add_argument("--engines", nargs="+", default=[TESSERACT, RAPIDOCR], choices=[TESSERACT, RAPIDOCR])
    args = p.parse_args()
    work = Path(args.work_dir)
    data = _data(work, args.latin, args.khmer)
    rows = []
    for engine in args.engines:
        for kind, settings in zip(("latin", "khmer"), ENGINE_SETTINGS[engine]):
            cfg = EvalConfig(data_file=data[kind], output_file=work / f"{engine}_{kind}.json", top_k=None,
                             resume=False, workers=args.workers, show_progress=False, **settings)
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            try:
                out = evaluate(cfg)
            except GemmaOcrError as e:
                print(f"{engine} on {kind}: skipped ({e})")
                break
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            doc = out.document
            low, high = doc["overall_cer_ci95"]
            row = {"engine": out.model_name, "data": kind, "samples": doc["total_samples"], "cer": doc["overall_cer"],
                   "ci": (low, high), "per_s": doc["total_samples"] / wall, "wall": wall, "cpu": cpu}
            if kind == "khmer":
                row["char_acc"], row["seq_acc"] = _khmer_accuracy(doc)
            rows.append(row)
            extra = f", char acc {row['char_acc']:.4f}, seq acc {row['seq_acc']:.4f}" if kind == "khmer" else ""
            print(f"{out.model_name} on {kind} ({doc['total_samples']}): CER {row['cer']:.4f} [{low:.4f}, {high:.4f}]{extra}; "
                  f"{row['per_s']:.1f} images/s, {wall:.1f} s wall, {cpu:.1f} s CPU")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0 if rows else 1


if __name__ == "__main__":
    run(main)
