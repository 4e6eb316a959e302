"""A cheap real objective for the search tests: mini-batch gradient descent on a linear regression.

Loaded by the search as ``--backend tests.helpers.search_objectives:LinearRegression`` (the repository root on PYTHONPATH) or
passed directly to ``run_search``. Validation MSE is reported after every epoch, so the pruner sees
a learning curve. Test hooks, all fixed parameters:

* ``fail_trials``: trial numbers that raise an out-of-memory error instead of training;
* ``bad_trials``: trial numbers whose updates are scaled by 1e-6 (a planted bad trial);
* ``barrier_dir`` + ``barrier_n``: the first trial of each process waits until ``barrier_n``
  processes have started one (so two workers provably overlap);
* ``sleep_s``: seconds each epoch takes at least (a trial long enough to kill its worker in);
* ``seed``: the training seed (the data order); the metrics say which one a trial trained with.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from gemma_ocr.errors import GemmaOcrError

PARAMS = {"learning_rate", "epochs", "l2", "batch_size", "optimizer"}
HOOKS = {"fail_trials", "bad_trials", "barrier_dir", "barrier_n", "n_samples", "seed", "sleep_s"}
_started = False


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=8)
    x = rng.normal(size=(n, 8))
    y = x @ w + 0.1 * rng.normal(size=n)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _barrier(directory: str, n: int) -> None:
    global _started
    if _started:
        return
    _started = True
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(directory).iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.05)


class LinearRegression:
    """Validation MSE of mini-batch gradient descent (plain or momentum) with L2 regularisation."""

    name = "linreg"
    metric = "val_mse"
    direction = "minimize"

    def validate(self, fixed: dict[str, Any], space: dict[str, Any], source: str) -> None:
        for key in list(fixed) + list(space):
            if key not in PARAMS | HOOKS:
                raise GemmaOcrError(f"{source}: unknown parameter {key!r} for the linear-regression objective")

    def run_trial(self, ctx: Any) -> dict[str, Any]:
        p = {"learning_rate": 0.05, "epochs": 5, "l2": 0.0, "batch_size": 16, "optimizer": "sgd", **ctx.fixed, **ctx.params}
        if p.get("barrier_dir"):
            _barrier(p["barrier_dir"], int(p.get("barrier_n", 2)))
        if ctx.trial_number in p.get("fail_trials", []):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        scale = 1e-6 if ctx.trial_number in p.get("bad_trials", []) else 1.0
        xt, yt, xv, yv = _data(int(p.get("n_samples", 200)))
        rng = np.random.default_rng(int(p.get("seed", 0)))
        w, v = np.zeros(xt.shape[1]), np.zeros(xt.shape[1])
        mse = float("nan")
        for epoch in range(int(p["epochs"])):
            order = rng.permutation(len(xt))
            for i in range(0, len(xt), int(p["batch_size"])):
                idx = order[i:i + int(p["batch_size"])]
                grad = 2 * xt[idx].T @ (xt[idx] @ w - yt[idx]) / len(idx) + 2 * p["l2"] * w
                v = 0.9 * v + grad if p["optimizer"] == "momentum" else grad
                w = w - scale * p["learning_rate"] * v
            mse = float(np.mean((xv @ w - yv) ** 2))
            time.sleep(float(p.get("sleep_s", 0)))
            ctx.reporter.check(mse, epoch)
        (ctx.output_dir / "weights.npy").write_bytes(w.tobytes())
        return {"val_mse": mse, "epochs": int(p["epochs"]), "seed": int(p.get("seed", 0))}

    def export_config(self, fixed: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**fixed, **params}.items() if k not in HOOKS}
