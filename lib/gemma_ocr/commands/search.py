"""Search LoRA fine-tuning hyperparameters with Optuna (TPE, random or grid), with median pruning.

Results: optuna_studies/{study}.db, {study}_best_params.json, {study}_best_config.json (a config
core/sft_gemma.py --config accepts) and models/hyperparam_search/trial_{n}/trial_{n}_results.json.
Several processes or machines can work one study: give each the same --study-name, a shared
--storage (postgresql://... or journal:PATH) and --resume.
"""

from __future__ import annotations

import argparse

from gemma_ocr.search.backends import BACKENDS
from gemma_ocr.search.config import SEARCH_MODES
from gemma_ocr.search.runner import DEFAULT_N_TRIALS, resolve_settings, run_search
from gemma_ocr.search.storage import DEFAULT_STUDIES_DIR

DEFAULT_CONFIG = "configs/hyperparm_configs/default.json"


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", help="name of the Optuna study (default: hpsearch-<timestamp>)")
    p.add_argument("--search-mode", choices=SEARCH_MODES, help="bayesian (TPE, default), random, or grid")
    p.add_argument("--n-trials", type=int,
                   help=f"trials this process runs (default {DEFAULT_N_TRIALS}; grid: the rest of the grid)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--resume", action="store_true",
                   help="continue the study of this name (its stored search space unless --config is given); "
                        "creates it when missing, so every worker of a shared study passes --resume")
    p.add_argument("--config", help="JSON/YAML with search_space and fixed training parameters "
                                    f"(default: fixed parameters of {DEFAULT_CONFIG} and the default space)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///PATH.db (default optuna_studies/{study}.db), "
                                     "postgresql://user:pass@host/db, or journal:PATH")
    p.add_argument("--model-name", help="base model folder or hub id (overrides the config)")
    p.add_argument("--input-data", help="training data JSON (overrides the config)")
    p.add_argument("--instruction", help="OCR instruction text (overrides the config)")
    p.add_argument("--base-output-dir", help="per-trial folders go here, one study per folder "
                                           "(default models/hyperparam_search)")
    p.add_argument("--n-jobs", type=int, help="trials run in parallel by this process (default 1)")
    p.add_argument("--backend", help=f"what a trial trains: {', '.join(BACKENDS)} (default gemma), "
                                     "or package.module:attribute")
    p.add_argument("--seed", type=int, help="training seed (overrides the config's \"seed\")")
    p.add_argument("--sampler-seed", type=int,
                   help="Optuna sampler seed (default: none); a resumed study and each further worker derive their own from it")
    p.add_argument("--max-total-trials", type=int,
                   help="study-wide cap over all workers: no worker starts a trial once the study has this many")
    p.add_argument("--pruner", dest="pruner_type", choices=("median", "none"), help="pruning (default median)")
    p.add_argument("--pruner-startup-trials", dest="pruner_n_startup_trials", type=int,
                   help="trials completed before pruning starts (default 5)")
    p.add_argument("--pruner-warmup-steps", dest="pruner_n_warmup_steps", type=int,
                   help="training steps of a trial before it can be pruned (default 10)")
    p.add_argument("--studies-dir", default=str(DEFAULT_STUDIES_DIR),
                   help="default SQLite databases and the best params/config files go here (default optuna_studies)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()

    settings = resolve_settings(
        args.config,
        study_name=args.study_name,
        storage=args.storage,
        resume=args.resume,
        studies_dir=args.studies_dir,
        default_config=DEFAULT_CONFIG,
        overrides={
            "search_mode": args.search_mode, "n_trials": args.n_trials, "timeout": args.timeout,
            "n_jobs": args.n_jobs, "backend": args.backend, "sampler_seed": args.sampler_seed,
            "max_total_trials": args.max_total_trials, "base_output_dir": args.base_output_dir,
            "pruner_type": args.pruner_type, "pruner_n_startup_trials": args.pruner_n_startup_trials,
            "pruner_n_warmup_steps": args.pruner_n_warmup_steps, "progress": not args.no_progress,
        },
        fixed_overrides={"model_name": args.model_name, "input_data": args.input_data, "instruction": args.instruction,
                         "seed": args.seed},
    )
    summary = run_search(settings)
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
    print(f"-> {summary.best_params_path}")
    print(f"-> {summary.best_config_path}")
    return 0
