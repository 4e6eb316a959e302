"""What a long job shows while it runs: one line per stage on the screen, the detail in the run's log file.

:class:`Stages` gives each stage a :class:`StageLine`. On a terminal it is one tqdm line updated in place,
replaced by the stage's last word when it ends; anywhere else (a CI log, a file) it is that last line, and one
at most every ``interval`` seconds while the stage runs, so a job prints a few lines, not hundreds.

:func:`run_log` sends every log record of the job (the project's, the libraries', Python warnings) to one file
for its duration, leaves on the console only the project's warnings and anyone's errors, and turns off the
libraries' own progress bars (transformers' weight loading), so the stage lines are what the screen shows.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gemma_ocr.errors import GemmaOcrError

log = logging.getLogger(__name__)

#: Seconds between two plain lines of a running stage when the output is not a terminal.
PLAIN_INTERVAL_S = 60.0
#: Seconds between two redraws of a terminal line (a training step or a sample can come every millisecond).
REDRAW_S = 0.2
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Libraries that log through a handler of their own; during :func:`run_log` their records go to the log file.
LIBRARY_LOGGERS = ("transformers", "optuna", "datasets", "huggingface_hub")


def elapsed(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), as tqdm shows it."""
    return tqdm.format_interval(seconds)


class StageLine:
    """The line of one stage: :meth:`set` while it runs, :meth:`end` with what it made.

    ``live``: a tqdm line redrawn in place on ``stream``; otherwise plain lines (see :class:`Stages`). A line
    made with ``stream=None`` shows nothing (a stage function called from Python without a display).
    """

    def __init__(self, name: str, stream: TextIO | None = None, live: bool = False, total: int | None = None,
                 interval: float = PLAIN_INTERVAL_S):
        self.name, self.stream, self.live, self.interval = name, stream, live, interval
        self.text, self.done, self.total = "", 0, total
        self.started = self.shown = time.monotonic()
        self.closed = False
        self.lock = threading.Lock()  # evaluation workers report samples from their threads
        self.bar: Any = None
        if stream is not None and live:
            self.bar = tqdm(total=total, desc=name, file=stream, dynamic_ncols=True, leave=False,
                            bar_format=self._format(), mininterval=REDRAW_S)

    def _format(self) -> str:
        with_bar = "{desc} |{bar:12}| [{elapsed}<{remaining}]"
        return with_bar if self.total else "{desc} [{elapsed}]"

    def set(self, text: str | None = None, done: int | None = None, total: int | None = None) -> None:
        """Show ``text`` (and ``done`` of ``total`` in the bar on a terminal). A count is redrawn at most every
        :data:`REDRAW_S` seconds; a new text without a count (what the stage does now) at once."""
        with self.lock:
            if self.closed:
                return
            if text is not None:
                self.text = text
            if total is not None:
                self.total = total
            if done is not None:
                self.done = done
            now = time.monotonic()
            if self.bar is not None:
                if done is None or now - self.shown >= REDRAW_S:
                    self._redraw()
                    self.shown = now
            elif self.stream is not None and now - self.shown >= self.interval:
                self._print(f"{self.name}: {self.text} [{elapsed(now - self.started)}]")
                self.shown = now

    def _redraw(self) -> None:
        bar = self.bar
        if self.total and bar.total != self.total:
            bar.total = self.total
            bar.bar_format = self._format()
        bar.n = min(self.done, self.total) if self.total else self.done
        bar.set_description_str(f"{self.name}: {self.text}" if self.text else self.name, refresh=False)
        bar.refresh()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def end(self, text: str | None = None) -> None:
        """The stage's last word (what it made, where): one line, in full, in place of the running one."""
        with self.lock:
            if not self.closed:
                self._close(text if text is not None else self.text)

    def stop(self, why: str) -> None:
        """The stage ended by an error: its last line says where it stood, and ``why``."""
        with self.lock:
            if not self.closed:
                self._close(f"{self.text} - {why}" if self.text else why)

    def _close(self, text: str) -> None:
        self.closed, self.text = True, text
        if self.bar is not None:
            self.bar.close()  # leave=False: the running line is cleared
        if self.stream is not None:
            self._print(f"{self.name}: {self.text} [{elapsed(time.monotonic() - self.started)}]")


class Stages:
    """Makes the stage lines of one job on ``stream`` (stderr by default): live where it is a terminal (``live``
    decides otherwise); ``silent``: lines that show nothing."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, interval: float = PLAIN_INTERVAL_S,
                 silent: bool = False):
        self.stream = None if silent else stream if stream is not None else sys.stderr
        self.live = self.stream is not None and (_is_terminal(self.stream) if live is None else live)
        self.interval = interval

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[StageLine]:
        """A stage's line for the block: ended by the block (``line.end(...)``, else with its last text); an
        exception leaves it stopped where it stood."""
        line = StageLine(name, self.stream, self.live, total, self.interval)
        try:
            yield line
        except BaseException as e:
            line.stop("interrupted" if isinstance(e, KeyboardInterrupt) else "stopped")
            raise
        line.end()


def no_line(name: str = "") -> StageLine:
    """A line that shows nothing (the stage functions' default when called from Python)."""
    return StageLine(name)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


# ---------------------------------------------------------------- the run's log file


class _Console(logging.StreamHandler):
    """The console during :func:`run_log`: the project's warnings and everyone's errors, written around a
    live stage line (tqdm's external write mode), never through it."""

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def _for_console(record: logging.LogRecord) -> bool:
    if not getattr(record, "console", True):
        return False
    return record.levelno >= logging.ERROR or (record.levelno >= logging.WARNING and record.name.startswith("gemma_ocr"))


@contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Every log record of the block into ``path`` (created; INFO and above, with time and logger), Python
    warnings included; on the console only the project's warnings and anyone's errors; transformers' progress
    bars off. An exception leaving the block is written to the file too. Everything is restored after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]  # cli.setup_logging's (not files)
    quiet = []
    for handler in consoles:
        console = _Console(handler.stream)
        console.setFormatter(handler.formatter)
        console.addFilter(_for_console)
        quiet.append(console)
    with ExitStack() as restore:
        level = root.level
        root.setLevel(min(level, logging.INFO) if level else logging.INFO)
        restore.callback(root.setLevel, level)
        for old, new in zip(consoles, quiet):
            root.removeHandler(old)
            root.addHandler(new)
            restore.callback(root.addHandler, old)
            restore.callback(root.removeHandler, new)
        root.addHandler(file_handler)
        restore.callback(file_handler.close)
        restore.callback(root.removeHandler, file_handler)
        for name in LIBRARY_LOGGERS:
            restore.enter_context(_through_root(name))
        restore.enter_context(_without_library_bars())
        logging.captureWarnings(True)
        restore.callback(logging.captureWarnings, False)
        try:
            yield path
        except BaseException as e:
            log.error("stopped: %s", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__,
                      exc_info=not isinstance(e, (GemmaOcrError, KeyboardInterrupt)), extra={"console": False})
            raise


@contextmanager
def _through_root(name: str) -> Iterator[None]:
    """A library's log records go to the root logger's handlers (the log file) instead of its own stderr handler.

    The library is imported first: transformers and Optuna add their handler when they are first imported.
    """
    if importlib.util.find_spec(name) is None:
        yield
        return
    importlib.import_module(name)
    logger = logging.getLogger(name)
    handlers, propagate = list(logger.handlers), logger.propagate
    for handler in handlers:
        logger.removeHandler(handler)
    logger.propagate = True
    try:
        yield
    finally:
        logger.propagate = propagate
        for handler in handlers:
            logger.addHandler(handler)


@contextmanager
def _without_library_bars() -> Iterator[None]:
    """transformers' progress bars (loading weights) off; restored after."""
    # here, not at the top: transformers takes a second to import, and only a run's log needs it
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
