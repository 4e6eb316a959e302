"""The project's layout: where every stage reads and writes by default, defined once.

Every default path of the suite is a property of :class:`Layout`, relative to its ``root``;
:data:`LAYOUT` is the layout of the working folder (the repository's root, where the programs run)::

    configs/hyperparm_configs/default.json      the training config of the search and the main job
    configs/khmer_digits/phase3_simple_configs.yaml   the Khmer-digits experiments
    data/raw_data/ocr.json                      raw OCR data (synth, import), split into
    data/input/ocr_non_test.json, ocr_test.json training (and validation) data, test data
    models/tiny-gemma3-reader                   the shipped tiny reader, the default base model
    models/gemma-ocr, models/merged-gemma-ocr   the adapter sft_gemma.py writes, its 16-bit merge
    models/hyperparam_search/                   the search's per-trial folders
    optuna_studies/                             SQLite studies, best params and best configs
    results/gemma_evaluation.json               evaluate.py's results; results/transcriptions.jsonl and
    results/comparison.json                     transcribe.py's rows, compare_results.py's comparison
    reports/                                    search analyses; reports/errors/ error reports
    models/pipeline/, results/pipeline/         the main job's own files, apart from the above
    generated_data/, training_output/           the Khmer-digits CNN's data and experiments

A program's flag or config key can point any of them elsewhere; the defaults come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYOUT", "Layout"]


@dataclass(frozen=True)
class Layout:
    """The default files and folders under ``root`` (relative paths stay relative: ``Layout().models`` is ``models``)."""

    root: Path = Path(".")

    # ------------------------------------------------------------ the top folders

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def studies(self) -> Path:
        """Optuna's SQLite databases and the best params/config files of each study."""
        return self.root / "optuna_studies"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # ------------------------------------------------------------ configs

    @property
    def train_config(self) -> Path:
        """The shipped training config: fixed parameters of the search, the main job's training."""
        return self.configs / "hyperparm_configs" / "default.json"

    @property
    def khmer_experiments(self) -> Path:
        return self.configs / "khmer_digits" / "phase3_simple_configs.yaml"

    # ------------------------------------------------------------ data

    @property
    def raw_data(self) -> Path:
        """Folder of the raw OCR file (and the images synth renders)."""
        return self.data / "raw_data"

    @property
    def raw_json(self) -> Path:
        """Raw OCR data ``[{img_path, ocr_results}]``: what synth and import write and split reads."""
        return self.raw_data / "ocr.json"

    @property
    def input(self) -> Path:
        """Folder of the split."""
        return self.data / "input"

    @property
    def non_test_json(self) -> Path:
        """Training (and validation) data ``[{image_path, ocr_text}]``."""
        return self.input / "ocr_non_test.json"

    @property
    def test_json(self) -> Path:
        """Test data, what evaluation scores."""
        return self.input / "ocr_test.json"

    @property
    def data_analysis(self) -> Path:
        """Statistics and plots of the split, lists of empty predictions."""
        return self.root / "core" / "data_analysis" / "output"

    # ------------------------------------------------------------ models

    @property
    def reader(self) -> Path:
        """The shipped tiny reader (:mod:`gemma_ocr.modeling.reader`): the default base model."""
        return self.models / "tiny-gemma3-reader"

    @property
    def random_model(self) -> Path:
        """A random-weight tiny Gemma 3 (``make_tiny_model.py`` without ``--pretrain``)."""
        return self.models / "tiny-gemma3-random"

    @property
    def adapter(self) -> Path:
        """The LoRA adapter sft_gemma.py writes (and the merge reads)."""
        return self.models / "gemma-ocr"

    @property
    def merged(self) -> Path:
        """The 16-bit merge of :attr:`adapter`, what serve.py serves."""
        return self.models / "merged-gemma-ocr"

    @property
    def search_trials(self) -> Path:
        """The search's per-trial folders (``trial_{n}/``), one sub-folder per study."""
        return self.models / "hyperparam_search"

    @property
    def khmer_best(self) -> Path:
        """The output folder a best Khmer-digits CNN config names."""
        return self.models / "khmer-digits-best"

    # ------------------------------------------------------------ results and reports

    @property
    def evaluation(self) -> Path:
        """evaluate.py's results file."""
        return self.results / "gemma_evaluation.json"

    @property
    def comparison(self) -> Path:
        """compare_results.py's comparison of results files."""
        return self.results / "comparison.json"

    @property
    def transcriptions(self) -> Path:
        """transcribe.py's JSON Lines file."""
        return self.results / "transcriptions.jsonl"

    @property
    def error_reports(self) -> Path:
        """One error report per results file, in a folder named after it."""
        return self.reports / "errors"

    # ------------------------------------------------------------ the main job's own files

    @property
    def pipeline_models(self) -> Path:
        """The main job's adapter and merged model, apart from the manual workflow's."""
        return self.models / "pipeline"

    @property
    def pipeline_results(self) -> Path:
        """The main job's evaluations, comparison, error report and stage record."""
        return self.results / "pipeline"

    # ------------------------------------------------------------ the Khmer-digits CNN

    @property
    def khmer_data(self) -> Path:
        """Khmer-digit images and their ``metadata.yaml``."""
        return self.root / "generated_data"

    @property
    def khmer_metadata(self) -> Path:
        return self.khmer_data / "metadata.yaml"

    @property
    def khmer_runs(self) -> Path:
        """One folder per Khmer-digits experiment."""
        return self.root / "training_output"


#: The layout of the working folder: the defaults of every program.
LAYOUT = Layout()
