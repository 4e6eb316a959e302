"""Split data/raw_data/ocr.json into data/input/ocr_non_test.json (1/6) and data/input/ocr_test.json (5/6), seed 42."""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.data.images import check_images
from gemma_ocr.data.records import load_raw_records, repeated_images, write_records
from gemma_ocr.data.split import DEFAULT_SEED, check_ratio, parse_ratio, split_non_test
from gemma_ocr.io import check_writable
from gemma_ocr.outputs import OutputFolder
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser, flag_value


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--input", default=str(LAYOUT.raw_json), help="raw file [{img_path, ocr_results}]")
    p.add_argument("--output-dir", default=str(LAYOUT.input), help=f"folder for {LAYOUT.non_test_json.name} and {LAYOUT.test_json.name}")
    p.add_argument("--non-test-ratio", type=flag_value(float, parse=parse_ratio), default="1/6",
                   help="share of non_test data: 0.2, 1/6 or 1:5 (non_test:test)")
    p.add_argument("--seed", type=flag_value(int), default=DEFAULT_SEED)
    p.add_argument("--check-images", action="store_true", help="decode every image first; stop naming the missing or corrupt ones")
    args = p.parse_args()

    ratio = check_ratio(args.non_test_ratio)
    out = Path(args.output_dir)
    names = [LAYOUT.non_test_json.name, LAYOUT.test_json.name]
    folder = OutputFolder(out, "--output-dir", "gemma-ocr split", overwrite_flag=None)  # a rerun replaces its own split
    folder.check_files(names, {"the raw data (--input)": args.input})
    check_writable(out, "--output-dir", folder=True)
    records = load_raw_records(args.input)
    if args.check_images:
        check_images(records, args.input)
    split = split_non_test(records, ratio, args.seed)
    write_records(split.non_test, out / LAYOUT.non_test_json.name)
    write_records(split.test, out / LAYOUT.test_json.name)
    folder.record(names)
    n = len(records)
    print(f"Loaded {n} records from {args.input}")
    print(f"non_test: {len(split.non_test):6d} ({len(split.non_test) / max(n, 1):.1%}) -> {out / LAYOUT.non_test_json.name}")
    print(f"test:     {len(split.test):6d} ({len(split.test) / max(n, 1):.1%}) -> {out / LAYOUT.test_json.name}")
    print(f"seed {args.seed}, non_test ratio {ratio:.4f}")
    repeats = repeated_images(records)
    if repeats:
        in_test = len(repeated_images(split.test))
        print(f"note: {len(repeats)} image{'s have' if len(repeats) > 1 else ' has'} several records; each image's "
              f"records are on one side (the ratio counts images)")
        if in_test:
            print(f"warning: the test part lists {in_test} image{'s' if in_test > 1 else ''} more than once, which "
                  f"core/evaluate.py refuses: "
                  f"import the data again with python core/import_ocr_data.py --dedupe")
    for name, part in (("non_test", split.non_test), ("test", split.test)):
        if not part:
            print(f"warning: {name} is empty: {n} records are too few for ratio {ratio:.4f} (add data or change --non-test-ratio)")
