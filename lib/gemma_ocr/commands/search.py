"""Search LoRA fine-tuning hyperparameters with Optuna (TPE, random or grid), with median pruning.

Results: optuna_studies/{study}.db, {study}_best_params.json, {study}_best_config.json (a config
core/sft_gemma.py --config accepts) and models/hyperparam_search/trial_{n}/trial_{n}_results.json.
Several processes or machines can work one study: give each the same --study-name, a shared
--storage (postgresql://... or journal:PATH) and --resume.

Settings: defaults < the study's stored definition (--resume) < --config < flags. Every search
setting below is also a key of the --config file; its other keys (and the names in its search_space)
are the training parameters: for the gemma backend any field of `gemma-ocr train --help`.
"""

from __future__ import annotations

from gemma_ocr.layout import LAYOUT
from gemma_ocr.search.config import FixedOverrides, SearchArguments
from gemma_ocr.search.runner import resolve_settings, run_search
from gemma_ocr.flags import ConfigParser, GivenOnce


def parser() -> ConfigParser:
    """The search's flags: every :class:`SearchArguments` field, the :class:`FixedOverrides`, ``--config``."""
    p = ConfigParser([SearchArguments, FixedOverrides], config_file=False, description=__doc__,
                     usage="%(prog)s [flags] [--config FILE]  (--help lists them)")
    p.add_argument("--config", metavar="FILE", action=GivenOnce, help="JSON/YAML with search_space, search settings and fixed training "
                                                    f"parameters (default: fixed parameters of {LAYOUT.train_config})")
    return p


def main() -> int:
    [(_, flags), (_, fixed)], args = parser().parse_layers()
    summary = run_search(resolve_settings(args.config, overrides=flags, fixed_overrides=fixed, default_config=LAYOUT.train_config))
    c = summary.counts
    print(f"study {summary.study_name} ({summary.storage})")
    print(f"this run: {len(summary.trials_run)} trial(s) {summary.trials_run}")
    print(f"study: {c['total']} trials, {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
          + (f", {c['running']} running" if c["running"] else ""))
    if summary.best_trial is None:
        print("no trial has completed yet: no best configuration")
        return 1 if c["total"] and not c["complete"] and not c["pruned"] else 0
    print(f"best {summary.metric}: {summary.best_value:.6g} (trial {summary.best_trial})")
    for name, value in summary.best_params.items():
        print(f"  {name}: {value}")
    if summary.pareto_front:
        print(f"Pareto front ({len(summary.pareto_front)} trials):")
        for point in summary.pareto_front:
            print(f"  trial {point['trial']}: " + ", ".join(f"{k} {v:.6g}" for k, v in point["values"].items()))
    print(f"-> {summary.best_params_path}")
    print(f"-> {summary.best_config_path}")
    return 0
