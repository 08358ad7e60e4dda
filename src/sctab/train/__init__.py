"""sctab.train: one training entry for every model kind.

- :func:`fit` / :func:`fit_ensemble`: one tracked run per fit, any runner, one "after the loop" step.
- Runners: :class:`RayTrainRunner` (Ray Train's DDP workers), :class:`TuneTrialRunner` (inside a Ray Tune
  trial), :class:`LocalRunner` (this process).
- Specs: :class:`TrainSpec` (neural kinds), :class:`BaselineSpec` (XGBoost, CellTypist), :func:`make_spec`.
- Tuning studies: :func:`run_study` (Ray Tune + Optuna).
"""

from sctab.train.fitting import FitError, FitResult, fit, fit_ensemble
from sctab.train.loop import TrainingError, run_training
from sctab.train.runners import LocalRunner, RayTrainRunner, Runner, TuneTrialRunner
from sctab.train.spec import BaselineSpec, TrainSpec, make_spec, spec_from_params
from sctab.train.tune import run_study

__all__ = ["fit", "fit_ensemble", "FitResult", "FitError", "TrainingError", "run_training", "Runner", "LocalRunner",
           "RayTrainRunner", "TuneTrialRunner", "TrainSpec", "BaselineSpec", "make_spec", "spec_from_params",
           "run_study"]
