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
                "models": (params.get("models") or {}).get(self.model), "train": params.get("train"),
                "profile": params.get("profile")}
        if self.eval_tissue:
            blob["eval_average_over"] = self.eval_average_over
        if self.eval_organs:
            blob["eval_organs"] = True
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(params: dict, name: str) -> dict:
    exp = params.get("experiments")
    if not isinstance(exp, dict):
        raise ConfigError("params have no `experiments` section (regenerate params.yaml from a profile)")
    sec = exp.get(name.replace("-", "_"))
    if not isinstance(sec, dict):
        raise ConfigError(f"params have no experiments.{name.replace('-', '_')} section")
    return sec


def _common(params: dict, model: str, sec: dict | None = None, **extra) -> dict:
    exp = params["experiments"]
    out = {"augment": bool(exp.get("augment", False))}
    epochs = (sec or {}).get("epochs") or exp.get("epochs")
    if epochs:
        out["epochs"] = int(epochs)
    if model not in (params.get("models") or {}):
        raise ConfigError(f"experiments name model {model!r}, which params.models lacks")
    out.update(extra)
    return out


def _seeds(params: dict, sec: dict | None = None) -> list[int]:
    seeds = (sec or {}).get("seeds") or params["experiments"].get("seeds") or [0]
    return [int(s) for s in seeds]


def model_size(params: dict) -> list[Point]:
    sec = _section(params, "model-size")
    model = sec.get("model", "sctab")
    base_arch = copy.deepcopy((params["models"][model]).get("arch") or {})
    widths = sec.get("widths") or []
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
    for model in sec.get("models") or ["sctab", "linear"]:
        for scheme in sec.get("schemes") or ["cells", "donors"]:
            if scheme not in ("cells", "donors"):
                raise ConfigError(f"experiments.data_size.schemes: {scheme!r} is neither cells nor donors")
            for frac in sec.get("fractions") or [15, 30, 50, 70, 100]:
                for seed in _seeds(params, sec):
                    over = _common(params, model, sec, subset=f"{scheme}_{int(frac)}", seed=seed)
                    if sec.get("equal_steps"):  # as many optimiser steps on a subset as on all of train
                        base = over.get("epochs") or int(params["models"][model].get("epochs", 10))
                        over["epochs"] = int(math.ceil(base * 100 / float(frac)))
                    points.append(Point(f"{model}-{scheme}{frac}-seed{seed}", model, over,
                                        {"scheme": scheme, "fraction": int(frac), "seed": seed},
                                        eval_organs=bool(sec.get("per_organ", True))))
    return points


def augmentation(params: dict) -> list[Point]:
    sec = _section(params, "augmentation")
    model = sec.get("model", "sctab")
    points = []
    for seed in _seeds(params, sec):
        for on in (True, False):
            cond = "with augmentation" if on else "without augmentation"
            points.append(Point(f"{model}-{'aug' if on else 'noaug'}-seed{seed}", model,
                                _common(params, model, sec, subset=sec.get("subset"), seed=seed, augment=on),
                                {"condition": cond, "seed": seed}))
    return points


def organ(params: dict) -> list[Point]:
    sec = _section(params, "organ")
    tissue = sec.get("tissue", "lung")
    points = []
    for model in sec.get("models") or ["sctab", "linear"]:
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
