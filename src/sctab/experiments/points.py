"""The paper's experiments as lists of training points (params.yaml `experiments`).

A point is one model trained once: which model, which settings differ from `models.<model>` (width, train
subset, augmentation, seed), the columns it contributes to the summary table, and optionally a tissue whose
test cells it is also scored on. Its key names it in MLflow and in the sweep's Ray Tune grid; its hash (the
full settings) decides whether a finished run can stand for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field

from sctab.config import ConfigError
from sctab.models import MODEL_NAMES
from sctab.params_schema import as_dict, section

EXPERIMENTS = ("model-size", "data-size", "augmentation", "organ")


@dataclass
class Point:
    key: str
    model: str
    overrides: dict                     # TrainSpec settings on top of models.<model>
    labels: dict = field(default_factory=dict)
    eval_tissue: str | None = None      # also score the test cells of this tissue_general
    # macro F1 on those cells: over the types in their truth, the published rule for a subset (see
    # sctab.evaluate.metrics)
    eval_average_over: str = "truth"
    eval_organs: bool = False           # also score the test cells of each organ system (paper Fig. 2c)

    def digest(self, params: dict) -> str:
        """Hash of everything the point's result depends on (settings, training section, profile, and for a
        tissue score its averaging rule, so a run scored under another rule is not reused)."""
        blob = {"model": self.model, "overrides": self.overrides, "eval_tissue": self.eval_tissue,
                "models": as_dict(section(params, f"models.{self.model}")), "train": as_dict(section(params, "train")),
                "profile": section(params, "profile")}
        if self.eval_tissue:
            blob["eval_average_over"] = self.eval_average_over
        if self.eval_organs:
            blob["eval_organs"] = True
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(params: dict, name: str):
    """The typed ``experiments.<name>`` section (``model-size`` -> ``model_size``)."""
    return section(params, f"experiments.{name.replace('-', '_')}")


def _common(params: dict, model: str, sec=None, **extra) -> dict:
    """The settings every point shares: augmentation off or on, and the experiment's epochs (the section's,
    else ``experiments.epochs``; none: the model's own budget)."""
    exp = section(params, "experiments")
    out = {"augment": exp.augment}
    epochs = getattr(sec, "epochs", None) or exp.epochs
    if epochs:
        out["epochs"] = int(epochs)
    if model not in MODEL_NAMES:
        raise ConfigError(f"experiments name model {model!r}, which is not a neural model ({', '.join(MODEL_NAMES)})")
    out.update(extra)
    return out


def _seeds(params: dict, sec=None) -> list[int]:
    seeds = getattr(sec, "seeds", None) or section(params, "experiments.seeds") or [0]
    return [int(s) for s in seeds]


def model_size(params: dict) -> list[Point]:
    sec = _section(params, "model-size")
    model = sec.model
    base_arch = copy.deepcopy(section(params, f"models.{model}").arch) if model in MODEL_NAMES else {}
    widths = sec.widths
    if not widths:
        raise ConfigError("experiments.model_size.widths is empty")
    points = []
    for n_d, n_a in widths:
        for seed in _seeds(params, sec):
            arch = {**base_arch, "n_d": int(n_d), "n_a": int(n_a)}
            points.append(Point(f"{model}-nd{n_d}-na{n_a}-seed{seed}", model,
                                _common(params, model, sec, arch=arch, seed=seed),
                                {"n_d": int(n_d), "n_a": int(n_a), "seed": seed}))
    return points


def data_size(params: dict) -> list[Point]:
    sec = _section(params, "data-size")
    points = []
    for model in sec.models:
        for scheme in sec.schemes:
            if scheme not in ("cells", "donors"):
                raise ConfigError(f"experiments.data_size.schemes: {scheme!r} is neither cells nor donors")
            for frac in sec.fractions:
                for seed in _seeds(params, sec):
                    over = _common(params, model, sec, subset=f"{scheme}_{int(frac)}", seed=seed)
                    if sec.equal_steps:  # as many optimiser steps on a subset as on all of train
                        base = over.get("epochs") or section(params, f"models.{model}.epochs") or 10
                        over["epochs"] = int(math.ceil(base * 100 / float(frac)))
                    points.append(Point(f"{model}-{scheme}{frac}-seed{seed}", model, over,
                                        {"scheme": scheme, "fraction": int(frac), "seed": seed},
                                        eval_organs=sec.per_organ))
    return points


def augmentation(params: dict) -> list[Point]:
    sec = _section(params, "augmentation")
    model = sec.model
    points = []
    for seed in _seeds(params, sec):
        for on in (True, False):
            cond = "with augmentation" if on else "without augmentation"
            points.append(Point(f"{model}-{'aug' if on else 'noaug'}-seed{seed}", model,
                                _common(params, model, sec, subset=sec.subset, seed=seed, augment=on),
                                {"condition": cond, "seed": seed}))
    return points


def organ(params: dict) -> list[Point]:
    sec = _section(params, "organ")
    tissue = sec.tissue
    points = []
    for model in sec.models:
        for seed in _seeds(params, sec):
            for only in (True, False):
                train = f"{tissue} only" if only else "cross-organ"
                subset = f"tissue_general={tissue}" if only else None
                points.append(Point(f"{model}-{'only' if only else 'all'}-{tissue}-seed{seed}", model,
                                    _common(params, model, sec, subset=subset, seed=seed),
                                    {"training": train, "seed": seed}, eval_tissue=tissue))
    return points


BUILDERS = {"model-size": model_size, "data-size": data_size, "augmentation": augmentation, "organ": organ}


def experiment_points(name: str, params: dict) -> list[Point]:
    if name not in BUILDERS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    points = BUILDERS[name](params)
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"experiment {name} has duplicate points (check its grid in params.yaml)")
    return points
