"""Analyse a hyperparameter study: parameter importance, optimization history, parallel coordinates,
intermediate values, top-N trials and a statistical summary (PNG + interactive HTML + report.md).

Interactive alternative on the same database: optuna-dashboard sqlite:///optuna_studies/NAME.db
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from gemma_ocr.outputs import OutputFolder
from gemma_ocr.layout import LAYOUT
from gemma_ocr.flags import ConfigParser
from gemma_ocr.settings import FieldError, Settings, setting

analysis = functools.partial(setting, group="analysis")


@dataclass
class AnalyzeArguments(Settings):
    """What to analyse and where the report goes."""

    study_name: str | None = analysis(None, "the study to analyse")
    output_dir: Path | None = analysis(None, f"where the report goes (null: {LAYOUT.reports}/<study_name>)")
    compare: list[str] | None = analysis(None, "other studies to compare with", metavar="STUDY")
    storage: str | None = analysis(None, "Optuna storage URL (null: sqlite:///<studies_dir>/<study>.db for each study)")
    top_n: int = analysis(10, "how many best trials the table lists")
    studies_dir: Path = analysis(LAYOUT.studies, "where default SQLite databases are")

    def validate(self) -> None:
        super().validate()
        if not self.study_name:
            raise FieldError("study_name", "is required: the study to analyse")


def main() -> None:
    args, _ = ConfigParser(AnalyzeArguments, config_file=False, description=__doc__).parse_settings()
    out = Path(args.output_dir or LAYOUT.reports / args.study_name)
    # a rerun replaces the report it wrote; files it did not write are never replaced
    folder = OutputFolder(out, "--output-dir", "gemma-ocr analyze", overwrite_flag=None)
    # the analysis loads matplotlib and plotly (start-up time): only once a report is asked for, not for --help
    from gemma_ocr.search.analysis import analyze

    with folder.writing() as staged:
        report = analyze(args.study_name, staged, args.compare, args.storage, args.top_n, args.studies_dir)
    report.output_dir = out
    report.files = {name: out / path.relative_to(staged) for name, path in report.files.items()}
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
