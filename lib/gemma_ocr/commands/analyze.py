"""Analyse a hyperparameter study: parameter importance, optimization history, parallel coordinates,
intermediate values, top-N trials and a statistical summary (PNG + interactive HTML + report.md).

Interactive alternative on the same database: optuna-dashboard sqlite:///optuna_studies/NAME.db
"""

from __future__ import annotations

import argparse

from gemma_ocr.search.analysis import analyze
from gemma_ocr.search.storage import DEFAULT_STUDIES_DIR


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study-name", required=True, help="the study to analyse")
    p.add_argument("--output-dir", help="where the report goes (default reports/{study_name})")
    p.add_argument("--compare", nargs="+", metavar="STUDY", help="other studies to compare with")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna_studies/{study}.db for each study)")
    p.add_argument("--top-n", type=int, default=10, help="how many best trials the table lists (default 10)")
    p.add_argument("--studies-dir", default=str(DEFAULT_STUDIES_DIR), help="where default SQLite databases are")
    args = p.parse_args()

    report = analyze(args.study_name, args.output_dir, args.compare, args.storage, args.top_n, args.studies_dir)
    s = report.summary
    st = s["states"]
    print(f"study {s['study_name']}: {s['n_trials']} trials ({st['complete']} complete, {st['pruned']} pruned, "
          f"{st['fail']} failed)")
    if s["best"]:
        print(f"best {s['metric']}: {s['best']['value']:.6g} (trial {s['best']['trial']})")
    top_params = sorted(((k, v["importance"]) for k, v in s["parameters"].items() if v.get("importance") is not None),
                        key=lambda kv: -kv[1])
    if top_params:
        print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in top_params))
    for note in report.notes:
        print(f"note: {note}")
    for row in s.get("comparison", []):
        print(f"  {row['study']}: best {row['best_value']} over {row['trials']} trials")
    print(f"-> {report.files['report.md']} ({len(report.files)} files in {report.output_dir})")
