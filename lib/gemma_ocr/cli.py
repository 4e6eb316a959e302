"""The ``gemma-ocr`` command and the plumbing of every program: logging set-up and clean error exits.

``gemma-ocr <command> [flags]`` runs the ``main()`` of ``gemma_ocr.commands.<module>``, the same
function the matching ``core/*.py`` program runs; ``gemma-ocr <command> --help`` lists its flags.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from gemma_ocr.errors import GemmaOcrError
from gemma_ocr.settings import did_you_mean

#: command -> (module in gemma_ocr.commands, the core/ program, what it does)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pipeline": ("pipeline", "pipeline.py", "the main job: data, search, training, merge, serve, evaluation"),
    "synth": ("synth", "make_synthetic_data.py", "render synthetic OCR lines with real fonts"),
    "import": ("import_data", "import_ocr_data.py", "make OCR data of a folder, a labels file or Parquet shards"),
    "split": ("split", "split_dataset.py", "split raw data into non-test and test sets"),
    "data-stats": ("data_stats", "data_analysis/train_test_data.py", "statistics and plots of the split"),
    "train": ("train", "sft_gemma.py", "LoRA fine-tuning with TRL's SFTTrainer"),
    "search": ("search", "hyperparameter_search.py", "hyperparameter search with Optuna"),
    "analyze": ("analyze", "analyze_hyperparam_results.py", "importance, history and plots of a search"),
    "merge": ("merge", "gemma_adapter_merge.py", "merge a LoRA adapter into 16-bit weights"),
    "serve": ("serve", "serve.py", "serve a model behind an OpenAI-compatible API"),
    "evaluate": ("evaluate", "evaluate.py", "CER/F1 of a served model (or a Khmer-digits CNN)"),
    "count-score": ("count_score", "count_score.py", "normalized scores of a results file"),
    "compare": ("compare", "compare_results.py", "models on the same data: differences, intervals, significance"),
    "errors": ("error_analysis", "error_analysis.py", "where the errors are: report of a results file"),
    "empty-predictions": ("empty_predictions", "data_analysis/analyze_empty_predictions.py",
                          "the samples a model answered nothing for"),
    "transcribe": ("transcribe", "transcribe.py", "transcribe new images with a served model"),
    "tiny-model": ("tiny_model", "make_tiny_model.py", "build the tiny local Gemma 3"),
    "khmer generate": ("khmer_generate", "khmer_digits/generate_data.py", "render Khmer-digits training data"),
    "khmer tune": ("khmer_tune", "khmer_digits/phase3_hyperparameter_tuning.py",
                   "run the Khmer-digits CNN's YAML experiments"),
}


def setup_logging(verbose: bool = False) -> None:
    """Plain `LEVEL message` logging on stderr for command-line use."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), raised where Ctrl-C would be, so the same clean-up runs (what finished is saved)."""


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this program as Ctrl-C does (:class:`Terminated`, a KeyboardInterrupt), from the main
    thread; :func:`run` then exits 143 after the same "interrupted" line."""
    def on_term(*_: object) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_term)


def run(main: Callable[[], int | None]) -> None:
    """Run a program's ``main``; a :class:`GemmaOcrError` ends in one line on stderr and exit code 2, Ctrl-C in
    "interrupted" and 130 (SIGTERM, where the program asked for :func:`stop_on_sigterm`: 143), a closed output
    pipe in 141 without a word."""
    setup_logging()
    try:
        code = main()
    except GemmaOcrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # what read the output has gone (`... | head -1`): no traceback, as a shell tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        sys.exit(128 + signal.SIGPIPE)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print("interrupted (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    sys.exit(code or 0)


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = [f"  {name:<{width}}  {summary} (core/{script})" for name, (_, script, summary) in COMMANDS.items()]
    return "usage: gemma-ocr <command> [flags]   (gemma-ocr <command> --help for its flags)\n\ncommands:\n" + "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``gemma-ocr`` console script: run the named command with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    words = 2 if " ".join(args[:2]) in COMMANDS else 1
    name = " ".join(args[:words])
    if name not in COMMANDS:
        group = [c for c in COMMANDS if c.startswith(name + " ")]
        if group:
            print(f"error: {name!r} needs a command: {', '.join(group)}", file=sys.stderr)
        else:
            hint = did_you_mean(name, list(COMMANDS)) or " (gemma-ocr --help lists the commands)"
            print(f"error: unknown command {name!r}{hint}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"gemma_ocr.commands.{COMMANDS[name][0]}")
    sys.argv = [f"gemma-ocr {name}", *args[words:]]
    run(module.main)
