"""Training: DDP workers under torchrun, checkpoint/resume, evaluation and baselines.

Public API (import from the submodules; this package imports nothing heavy)::

    tenfold.training.config.TrainConfig            what to train on and how
    tenfold.training.launch.run_torchrun           train -> TrainResult (model folder, figures, lineage)
    tenfold.training.evaluate.evaluate_model       one model folder on a holdout -> Metrics
    tenfold.training.evaluate.evaluate_with_baselines   model + both baselines -> EvaluationReport
    tenfold.training.evaluate.split_from_settings  the time-based (train, holdout) months
    tenfold.training.data.validation_split         the validation slice: the window's newest days
    tenfold.training.calibration.calibrate         the calibration fitted on that slice (docs/training.md)
"""

from __future__ import annotations
