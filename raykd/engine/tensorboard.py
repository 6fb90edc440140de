"""Per-epoch metrics of Ray Train runs in TensorBoard event files.

Ray Train V2 no longer accepts Tune's logger callbacks; its hook for the driver side is
``ray.train.UserCallback``, whose ``after_report`` runs in the run's controller (on the driver's node)
with the metrics every worker reported. :class:`TensorBoardCallback` writes rank 0's numbers there
with tensorboardX (Ray's own TensorBoard writer dependency), one step per epoch, flushed at once, so a
run that crashes keeps everything it reported. Tune sweeps write their own event files (Ray Tune's
default ``TBXLoggerCallback``); MLflow users add ``ray.air.integrations.mlflow.MLflowLoggerCallback``
to a sweep.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.train import UserCallback


class TensorBoardCallback(UserCallback):
    """Write each report's numeric metrics to ``logdir`` (``tensorboard --logdir OUTPUT_DIR/tensorboard``)."""

    def __init__(self, logdir: str | Path, step_key: str = "epoch"):
        self.logdir = str(logdir)
        self.step_key = step_key
        self._writer = None
        self._step = 0

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        first = metrics[0]
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.logdir, flush_secs=5)
        step = first.get(self.step_key)
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else self._step
        self._step = step + 1
        for key, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"train/{key}", value, global_step=step)
        self._writer.flush()

    def __getstate__(self):  # the writer stays in the process that opened it
        return {**self.__dict__, "_writer": None}
