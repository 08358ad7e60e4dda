"""The paper's experiments (Fig. 2, Supp. Tables 2, 3, 7): points, sweeps on Ray Tune, summaries."""

from sctab.experiments.points import Point, experiment_points
from sctab.experiments.summary import summarise_experiment
from sctab.experiments.sweep import SweepError, mlflow_experiment, run_experiment

__all__ = ["Point", "experiment_points", "run_experiment", "summarise_experiment", "mlflow_experiment", "SweepError"]
