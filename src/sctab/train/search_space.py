"""Tuning search spaces (conf/tune/<model>.yaml): read, check against the model's own settings, turn into Ray Tune.

A file looks like::

    space:                       # setting of models.<model> -> distribution
      eta: {loguniform: [0.01, 0.3]}
      max_depth: {randint: [3, 10]}          # both ends included
      subsample: {uniform: [0.5, 1.0]}
      top_genes: {choice: [100, 300, 500]}
    default: {eta: 0.3, ...}     # the library's defaults: the "default parameters" column of Supp. Table 4
    points_to_evaluate: []       # configs the study tries first (Optuna enqueues them)

Every setting is tried at its bounds against the model's config checks before any trial starts, so a typo or a
range the model refuses is an error naming the file and the setting, not a study of failed trials.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sctab.config import REPO_ROOT
from sctab.params_schema import as_dict, section
from sctab.train.baselines import baseline_config
from sctab.train.spec import BaselineSpec, make_spec

CONF_DIR = REPO_ROOT / "conf" / "tune"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "lograndint", "quniform", "choice")
TUNABLE = ("xgboost", "celltypist", "linear", "mlp", "sctab")


class SearchSpaceError(ValueError):
    """A search space file is missing, empty or names something the model does not know."""


@dataclass
class SearchSpace:
    model: str
    space: dict                      # name -> {distribution: args}
    default: dict = field(default_factory=dict)
    points_to_evaluate: list = field(default_factory=list)
    path: Path | None = None

    def to_tune(self) -> dict:
        """Ray Tune's param_space (OptunaSearch converts it to Optuna distributions)."""
        from ray import tune

        out = {}
        for name, spec in self.space.items():
            (kind, args), = spec.items()
            if kind == "uniform":
                out[name] = tune.uniform(*args)
            elif kind == "loguniform":
                out[name] = tune.loguniform(*args)
            elif kind == "randint":
                out[name] = tune.randint(int(args[0]), int(args[1]) + 1)
            elif kind == "lograndint":
                out[name] = tune.lograndint(int(args[0]), int(args[1]) + 1)
            elif kind == "quniform":
                out[name] = tune.quniform(*args)
            else:
                out[name] = tune.choice(list(args))
        return out

    def corners(self) -> list[dict]:
        """One-setting configs at each bound / choice: what is checked before the study starts."""
        out = []
        for name, spec in self.space.items():
            (kind, args), = spec.items()
            values = list(args) if kind == "choice" else list(args[:2])
            out.extend({name: v} for v in values)
        return out


def load_search_space(model: str, path: str | Path | None = None) -> SearchSpace:
    """Read and check the search space of ``model`` (default: conf/tune/<model>.yaml)."""
    if model not in TUNABLE:
        raise SearchSpaceError(f"no tuning for model {model!r}; tunable: {', '.join(TUNABLE)}")
    path = Path(path) if path else CONF_DIR / f"{model}.yaml"
    if not path.exists():
        raise SearchSpaceError(f"search space file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SearchSpaceError(f"search space file {path} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise SearchSpaceError(f"search space file {path} is not a YAML mapping")
    unknown = sorted(set(doc) - {"space", "default", "points_to_evaluate"})
    if unknown:
        raise SearchSpaceError(f"{path}: unknown section(s) {unknown}; expected space, default, points_to_evaluate")
    space = doc.get("space")
    if not isinstance(space, dict) or not space:
        raise SearchSpaceError(f"{path}: the search space is empty (give at least one setting under `space:`)")
    for name, spec in space.items():
        _check_distribution(path, name, spec)
    default = doc.get("default") or {}
    points = doc.get("points_to_evaluate") or []
    if not isinstance(default, dict):
        raise SearchSpaceError(f"{path}: `default` must be a mapping of settings")
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise SearchSpaceError(f"{path}: `points_to_evaluate` must be a list of mappings")
    for p in points:
        extra = sorted(set(p) - set(space))
        if extra:
            raise SearchSpaceError(f"{path}: points_to_evaluate names {extra}, which are not in the space")
    return SearchSpace(model=model, space=space, default=default, points_to_evaluate=points, path=path)


def _check_distribution(path: Path, name: str, spec) -> None:
    where = f"{path}: setting {name!r}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(f"{where}: write one distribution as {{kind: [args]}}, "
                               f"kinds: {', '.join(DISTRIBUTIONS)}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(f"{where}: unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(f"{where}: {kind} needs a non-empty list of arguments")
    if kind == "choice":
        return
    need = 3 if kind == "quniform" else 2
    if len(args) != need or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                                    for a in args):
        raise SearchSpaceError(f"{where}: {kind} needs {need} finite numbers, got {args}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise SearchSpaceError(f"{where}: low ({lo}) must be below high ({hi})")
    if kind in ("loguniform", "lograndint") and lo <= 0:
        raise SearchSpaceError(f"{where}: {kind} needs a positive low bound, got {lo}")
    if kind in ("randint", "lograndint") and not all(float(a).is_integer() for a in args):
        raise SearchSpaceError(f"{where}: {kind} needs integer bounds, got {args}")


def check_against_model(space: SearchSpace, params: dict) -> None:
    """Try every bound of every setting (and the default config) through the model's own checks."""
    checks = [("the space", c) for c in space.corners()]
    checks += [("points_to_evaluate", p) for p in space.points_to_evaluate]
    if space.default:
        checks.append(("default", space.default))
    for what, overrides in checks:
        try:
            model_config(space.model, params, overrides)
        except ValueError as e:
            raise SearchSpaceError(f"{space.path}: {what} {overrides} is refused by {space.model}: {e}") from e


def model_config(model: str, params: dict, overrides: dict) -> dict:
    """``models.<model>`` with ``overrides``, checked (raises ValueError with the model's message)."""
    spec = make_spec(copy.deepcopy(params), model, augmentations="(checked when a trial starts)", overrides=overrides)
    if isinstance(spec, BaselineSpec):
        return baseline_config(spec)
    settings = as_dict(section(params, f"models.{model}"))
    return {**{k: v for k, v in settings.items() if v is not None}, **overrides}
