"""Statistics and plots of the train/test split: label lengths, character frequencies, image sizes."""

from __future__ import annotations

import json
from pathlib import Path

from gemma_ocr.data.records import load_records
from gemma_ocr.data.stats import plot_splits, split_stats
from gemma_ocr.io import atomic_write_json
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--train-file", default=str(LAYOUT.non_test_json))
    p.add_argument("--test-file", default=str(LAYOUT.test_json))
    p.add_argument("--output-dir", default=str(LAYOUT.data_analysis))
    args = p.parse_args()
    stats = [split_stats("non_test", load_records(args.train_file)), split_stats("test", load_records(args.test_file))]
    out = Path(args.output_dir)
    summaries = [s.summary() for s in stats]
    atomic_write_json(out / "data_statistics.json", summaries)
    for s in summaries:
        print(json.dumps({k: v for k, v in s.items() if k not in ("top_chars", "unreadable_images")}, ensure_ascii=False))
        if s["unreadable_images"]:
            print(f"warning: {len(s['unreadable_images'])} {s['split']} image(s) missing or unreadable, "
                  f"e.g. {s['unreadable_images'][0]} (fix the paths or remove the records)")
    for path in plot_splits(stats, out):
        print(f"plot -> {path}")
    print(f"statistics -> {out / 'data_statistics.json'}")
