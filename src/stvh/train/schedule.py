"""Learning-rate stages, a length scaled by data size, and early stopping (``train.*``).

The paper trains a fixed number of epochs with step decays (Volleyball: 1e-5,
5e-6 from epoch 11, 1e-6 from epoch 21), i.e. ``train.lr_steps`` with
``train.steps`` and ``train.patience`` null, which this class reproduces exactly.
Two options beyond the paper (docs/model.md, "Options beyond the paper"):

* ``train.steps`` (a number of optimizer steps): the run lasts
  ``ceil(steps / batches per epoch)`` epochs (at most twice ``train.epochs``) instead of ``train.epochs``, and the
  ``lr_steps`` epochs, written against ``train.epochs``, are scaled to that length.
  A fixed epoch count gives 9 steps an epoch to a cell of 144 training clips and 27
  to the demo's 426: the small set would get a third of the updates.
* ``train.steps_per_video``: ``train.steps`` is raised to this many steps per video of the training clips
  (:func:`step_budget`). The same-video contrast of the shallowest code (``loss.visual``) has one class per
  video, and 400 steps left it under-trained at 55 videos (about 14 training clips each): visual mAP@10 0.80
  after 10 epochs, 0.93 after 1100 steps (20 a video), activity 0.95 -> 0.99 (docs/model.md).
* ``train.patience`` (epochs): when the selection score has not risen by more than
  ``MIN_DELTA`` for that many epochs of a stage, the next ``lr_steps`` stage starts
  early; in the last stage, training stops. A stopped run is finished: ``--resume``
  does not train it further.
"""

from __future__ import annotations

import math

MAX_STRETCH = 2  # train.steps makes at most this many times train.epochs
MIN_DELTA = 1e-4  # a rise of the selection score smaller than this is not progress (mAP ties)


def step_budget(steps: int | None, steps_per_video: int | None, videos: int) -> int | None:
    """The ``steps`` a :class:`Schedule` gets: ``train.steps`` raised to ``steps_per_video`` x ``videos`` (the
    videos of the training clips); None (both off): the run lasts ``train.epochs``."""
    if not steps_per_video:
        return steps
    return max(int(steps or 0), int(steps_per_video) * max(int(videos), 1))


class Schedule:
    """Which learning rate each epoch uses, and when training stops (1-based epochs)."""

    def __init__(self, base_lr: float, lr_steps, epochs: int, batches_per_epoch: int,
                 steps: int | None = None, patience: int | None = None):
        self.nominal = int(epochs)
        want = self.nominal if steps is None else max(1, math.ceil(int(steps) / max(batches_per_epoch, 1)))
        self.epochs = min(want, MAX_STRETCH * self.nominal)  # a tiny set does not train for hundreds of epochs
        scale = self.epochs / self.nominal
        starts = sorted((int(e), float(lr)) for e, lr in lr_steps)
        self.stages = [(1, float(base_lr))] + [(max(2, 1 + round((e - 1) * scale)), lr) for e, lr in starts]
        self.patience = patience
        self.stage, self.stage_start = 0, 1
        self.best, self.best_epoch = -math.inf, 0
        self.stopped_at: int | None = None
        self._catch_up(1)

    def _catch_up(self, epoch: int) -> None:
        """Enter every stage whose start epoch is <= ``epoch``."""
        while self.stage + 1 < len(self.stages) and self.stages[self.stage + 1][0] <= epoch:
            self.stage += 1
            self.stage_start = max(self.stage_start, self.stages[self.stage][0])

    @property
    def lr(self) -> float:
        """The learning rate of the current stage (the next epoch's)."""
        return self.stages[self.stage][1]

    @property
    def finished(self) -> bool:
        return self.stopped_at is not None

    def after_epoch(self, epoch: int, score: float) -> bool:
        """Record ``epoch``'s selection score; True when training is over after it."""
        if score > self.best + MIN_DELTA:
            self.best, self.best_epoch = float(score), epoch
        if epoch >= self.epochs:
            self.stopped_at = epoch
            return True
        stalled = epoch - max(self.best_epoch, self.stage_start - 1)
        if self.patience is not None and stalled >= self.patience:
            if self.stage + 1 < len(self.stages):  # the next stage starts now
                self.stage += 1
                self.stage_start = epoch + 1
            else:
                self.stopped_at = epoch
                return True
        self._catch_up(epoch + 1)
        return False

    def state_dict(self) -> dict:
        return {"stage": self.stage, "stage_start": self.stage_start, "best": self.best,
                "best_epoch": self.best_epoch, "stopped_at": self.stopped_at, "epochs": self.epochs}

    def load_state_dict(self, state: dict | None, epochs_done: int) -> None:
        """Restore from a checkpoint; a checkpoint without a schedule (older runs) follows the nominal stages."""
        if not state:
            self.stage, self.stage_start = 0, 1
            self._catch_up(epochs_done + 1)
            return
        self.stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.stopped_at = state.get("stopped_at")
