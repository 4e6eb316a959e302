"""Turn folders of images with .gt.txt/.txt transcriptions, or .tsv/.csv/.jsonl/.parquet labels files, into data/raw_data/ocr.json."""

from __future__ import annotations

from pathlib import Path

from gemma_ocr.data.importing import dedupe, find_duplicates, import_sources
from gemma_ocr.data.images import IMAGE_SUFFIXES, check_images
from gemma_ocr.data.records import write_records
from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.io import check_writable
from gemma_ocr.outputs import check_outputs_not_inputs
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ArgumentParser

SOURCE_HELP = ("a folder of images (searched recursively), each with its transcription beside it as NAME.gt.txt or "
               "NAME.txt; or a labels file: .tsv/.txt (path<TAB>text per line), .csv (header with image and text "
               "columns), .jsonl (one object per line), .parquet (e.g. a Hugging Face dataset's shard, images "
               "embedded or as paths), .json (either of the project's layouts). Several sources are joined in order")


def main() -> None:
    p = ArgumentParser(description=__doc__)
    p.add_argument("source", nargs="+", help=SOURCE_HELP)
    p.add_argument("--output", default=str(LAYOUT.raw_json), help="raw OCR file to write [{img_path, ocr_results}]")
    p.add_argument("--image-root", help="folder the labels file's image paths are relative to (default: the labels file's folder)")
    p.add_argument("--image-key", help="image column (.csv/.parquet) or key (.jsonl) when not one of the usual names")
    p.add_argument("--text-key", help="text column (.csv/.parquet) or key (.jsonl) when not one of the usual names")
    p.add_argument("--images-dir", help="folder for the images embedded in .parquet sources, one sub-folder per "
                                        "source (default: images/ beside --output)")
    p.add_argument("--skip-unlabeled", action="store_true", help="leave out folder images without a transcription (and failed rows of a transcriptions .jsonl) instead of stopping")
    p.add_argument("--dedupe", action="store_true", help="keep only the first row of an image listed more than once "
                                                         "(without it, an image listed with different texts stops the import)")
    p.add_argument("--check-images", action="store_true", help="decode every image first; stop naming the missing or corrupt ones")
    p.add_argument("--force", action="store_true", help="overwrite --output when it exists")
    args = p.parse_args()

    output = Path(args.output)
    check_outputs_not_inputs({"the source": args.source, "the image root (--image-root)": args.image_root},
                             {"--output": output})
    if output.exists() and not args.force:
        raise GemmaOcrError(f"{output} exists: pass --force to overwrite it, or --output another file")
    check_writable(output, "--output")
    images_root = Path(args.images_dir) if args.images_dir else output.parent / "images"
    if any(Path(source).suffix.lower() == ".parquet" for source in args.source):  # their images are written there
        check_writable(images_root, "--images-dir", folder=True)
    result = import_sources(args.source, images_root=images_root,
                            image_root=args.image_root, image_key=args.image_key, text_key=args.text_key,
                            skip_unlabeled=args.skip_unlabeled)
    sources = args.source[0] if len(args.source) == 1 else f"{len(args.source)} sources"
    duplicates = find_duplicates(result)
    if duplicates.conflicting and not args.dedupe:
        raise GemmaOcrError(f"{sources}: {duplicates.describe_conflicting()} (fix the labels, or pass --dedupe to keep "
                            f"each image's first row)")
    if args.dedupe and duplicates:
        result = dedupe(result)
    if args.check_images:
        check_images(result.records, sources)
    write_records(result.records, output, raw=True)
    print(f"Imported {len(result.records)} samples from {sources} ({result.source_kind}) -> {output}")
    if duplicates.repeated:
        if args.dedupe:
            print(f"dropped {duplicates.repeated_rows} repeated rows (--dedupe): {duplicates.describe_repeated()}")
        else:
            print(f"warning: {duplicates.describe_repeated()}; kept (each counts twice in training, and evaluate.py "
                  f"refuses a test file with a repeated image): pass --dedupe to keep each image's first row")
    if duplicates.conflicting:  # with --dedupe (without it the import stopped)
        print(f"warning: {duplicates.describe_conflicting()}; kept each image's first row (--dedupe)")
    if result.unlabeled:
        print(f"skipped {len(result.unlabeled)} images without a transcription, e.g. {result.unlabeled[0]}")
    if result.orphan_texts:
        print(f"note: {len(result.orphan_texts)} .txt files lie beside no image and were not read, "
              f"e.g. {result.orphan_texts[0]} (an image with the same name and another extension?)")
    if result.other_files:
        print(f"note: {len(result.other_files)} files are neither images ({' '.join(IMAGE_SUFFIXES)}) nor .txt "
              f"transcriptions and were not read, e.g. {result.other_files[0]} (convert images in other formats to PNG)")
    if result.empty_texts:
        print(f"note: {result.empty_texts} samples have an empty transcription (they teach the model to answer nothing)")
    if output == LAYOUT.raw_json:
        print("next: python core/split_dataset.py")
    else:
        print(f"next: python core/split_dataset.py --input {output}")
