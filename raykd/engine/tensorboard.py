"""Per-epoch metrics of Ray Train runs in TensorBoard event files.

Ray Train V2 no longer accepts Tune's logger callbacks; its hook for the driver side is
``ray.train.UserCallback``, whose ``after_report`` runs in the run's controller (on the driver's node)
with the metrics every worker reported. :class:`TensorBoardCallback` writes rank 0's numbers there
with tensorboardX (Ray's own TensorBoard writer dependency), one step per epoch, flushed at once, so a
run that crashes keeps everything it reported. A run that trains several models in turn reports each
epoch with its model's ``item``: each item gets its own directory. Tune sweeps write their own event
files (Ray Tune's default ``TBXLoggerCallback``); MLflow users add
``ray.air.integrations.mlflow.MLflowLoggerCallback`` to a sweep.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.train import UserCallback


class TensorBoardCallback(UserCallback):
    """Write each report's numeric metrics to ``logdir`` (``tensorboard --logdir OUTPUT_DIR/tensorboard``);
    ``logdir`` may map items to directories (a report goes to its ``item``'s)."""

    def __init__(self, logdir: str | Path | dict[str, str | Path], step_key: str = "epoch"):
        self.logdirs = {k: str(v) for k, v in logdir.items()} if isinstance(logdir, dict) else {None: str(logdir)}
        self.step_key = step_key
        self._writers: dict = {}
        self._steps: dict = {}

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        first = metrics[0]
        key = first.get("item") if first.get("item") in self.logdirs else next(iter(self.logdirs))
        if key not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[key] = SummaryWriter(self.logdirs[key], flush_secs=5)
        writer = self._writers[key]
        step = first.get(self.step_key)
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else self._steps.get(key, 0)
        self._steps[key] = step + 1
        for name, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(f"train/{name}", value, global_step=step)
        writer.flush()

    def __getstate__(self):  # the writers stay in the process that opened them
        return {**self.__dict__, "_writers": {}}
