"""Run the Khmer-digits CNN experiments of a YAML file and write a results JSON (best_result, all_results)."""

from __future__ import annotations

from gemma_ocr.flags import ArgumentParser, GivenOnce, flag_value
from gemma_ocr.layout import LAYOUT


def main() -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default=str(LAYOUT.khmer_experiments), action=GivenOnce, help="experiment YAML file")
    p.add_argument("--experiments", nargs="+", default=None, help="names of experiments to run (default: all)")
    p.add_argument("--output-dir", default=str(LAYOUT.khmer_runs), help="one folder per experiment is made here")
    p.add_argument("--results-file", default=None,
                   help="results JSON (default: <output-dir>/hyperparameter_tuning_results_<time>.json)")
    p.add_argument("--threads", type=flag_value(int), default=None,
                   help="torch CPU threads of every experiment (default: each experiment's training.num_threads, "
                        "1 unless set; 0: torch's default, all cores)")
    p.add_argument("--list", action="store_true", help="list the file's experiments and exit")
    p.add_argument("--list-presets", action="store_true", help="list model presets with parameter counts and exit")
    args = p.parse_args()

    if args.list_presets:
        # here, not at the top: the CNN's modules import torch (a second and more), which --help never needs
        from gemma_ocr.khmer_digits.models import DEFAULT_PRESET, describe_presets

        for row in describe_presets():
            mark = "  (default)" if row["preset"] == DEFAULT_PRESET else ""
            print(f"{row['preset']:<11} {row['backbone']:<16} BiLSTM {row['lstm_hidden']:<4} {row['head']:<9} "
                  f"{row['parameters']:>12,} parameters{mark}")
        return 0

    from gemma_ocr.khmer_digits.tuner import HyperparameterTuner  # torch too: not for --help

    tuner = HyperparameterTuner(args.config, output_dir=args.output_dir, results_file=args.results_file,
                                num_threads=args.threads)
    if args.list:
        for name, exp in tuner.experiments.items():
            model = (exp.get("model") or {}).get("name", "?") if isinstance(exp, dict) else "?"
            print(f"{name}  (model {model})")
        return 0
    doc = tuner.run_experiments(args.experiments)
    print(f"{'experiment':<24} {'status':<10} {'char acc':>9} {'seq acc':>8} {'epochs':>6} {'time s':>8}")
    for r in doc["all_results"]:
        print(f"{r['experiment_name']:<24} {r['status']:<10} {r['best_val_char_accuracy']:>9.4f} "
              f"{r['best_val_seq_accuracy']:>8.4f} {r['total_epochs']:>6} {r['training_time']:>8.1f}")
        if r["status"] != "completed":
            print(f"  error: {r['error_message']}")
    best = doc["best_result"]
    if best:
        print(f"best: {best['experiment_name']} (char accuracy {best['best_val_char_accuracy']:.4f})")
    print(f"results: {tuner.results_file}")
    return 1 if doc["experiments_failed"] else 0
