"""What one training run needs, read from params.yaml (``train`` and ``models.<name>`` sections).

The paper's values (Methods, "Model details") are the ``census-2023-05-15`` profile's; ``tiny`` scales
batch size and epochs. Everything a Ray worker needs travels in a plain dict (``TrainSpec.to_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from sctab.config import ConfigError, check_device, check_precision
from sctab.models import BASELINES, MODEL_NAMES
from sctab.params_schema import as_dict, section


@dataclass
class TrainSpec:
    model: str
    store: str
    arch: dict = field(default_factory=dict)
    batch_size: int = 2048
    lr: float = 0.005
    weight_decay: float = 0.05
    lr_gamma: float = 0.9
    epochs: int = 50
    patience: int | None = None          # early stopping on val macro F1; None = train all epochs
    # a budget in optimiser steps instead of epochs: the run gets as many epochs as its train rows need to make
    # this many steps (at least one), so a 1,000-cell reference and a 15 M-cell census get the same number of
    # updates, not the same number of passes; early stopping (patience) still ends it sooner
    max_steps: int | None = None
    # small references (docs/references.md): early stopping may not act before this many optimiser steps (the
    # feature attention needs a few hundred before it selects genes), and acts on the validation macro F1
    # smoothed over epochs (an exponential moving average with this weight on the past; 0 = the raw F1), since F1
    # on a few hundred validation cells moves by several points from epoch to epoch; the learning rate rises
    # linearly over the first warmup_steps steps
    min_steps: int = 0
    # a cap on a step budget in passes over the train cells: max_steps updates are at most this many epochs, and
    # min_steps shrinks in the same proportion. On 222 train cells (4 steps an epoch) 3,000 steps would be 750
    # epochs of overfitting; capped at 400 they are 1,600 steps, with early stopping from step 800. None = no cap
    max_epochs: int | None = None
    val_smoothing: float = 0.0
    warmup_steps: int = 0
    augment: bool = False
    augmentations: str | None = None     # augmentations.npy (or its folder) when augment is on
    augment_clip: tuple[float, float] = (0.0, 9.0)
    seed: int = 0
    subset: str | None = None            # train rows: a store subset (donors_30) or column=label (tissue_general=lung)
    loader: str = "stream"
    block_row_groups: int = 8
    eval_batch_size: int = 4096
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: str | bool = "auto"
    device: str = "auto"                 # auto | cpu | cuda[:N] (sctab.models.device)
    precision: str = "32"                # 32 | bf16-mixed (bf16 autocast for the matmuls)
    max_failures: int = 3
    checkpoints_to_keep: int = 2

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; known: {', '.join(MODEL_NAMES)}")
        for name in ("batch_size", "epochs", "num_workers", "cpus_per_worker", "eval_batch_size", "block_row_groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"models.{self.model}/train: {name} must be a positive integer, got {v!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool)
                                           or self.max_steps < 1):
            raise ConfigError(f"models.{self.model}: max_steps must be a positive integer or null, "
                              f"got {self.max_steps!r}")
        if self.max_epochs is not None:
            if not isinstance(self.max_epochs, int) or isinstance(self.max_epochs, bool) or self.max_epochs < 1:
                raise ConfigError(f"models.{self.model}: max_epochs must be a positive integer or null, "
                                  f"got {self.max_epochs!r}")
            if self.max_steps is None:
                raise ConfigError(f"models.{self.model}: max_epochs caps a step budget (max_steps), and there is "
                                  f"none; with an epoch count, set epochs instead")
        for name in ("min_steps", "warmup_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"models.{self.model}: {name} must be a non-negative integer, got {v!r}")
        if not isinstance(self.val_smoothing, (int, float)) or not 0 <= self.val_smoothing < 1:
            raise ConfigError(f"models.{self.model}: val_smoothing must be in [0, 1), got {self.val_smoothing!r}")
        for name in ("lr", "weight_decay", "lr_gamma"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or (name != "weight_decay" and v == 0):
                raise ConfigError(f"models.{self.model}: {name} must be a positive number, got {v!r}")
        if self.augment and not self.augmentations:
            raise ConfigError(f"models.{self.model}: augment is on but no augmentation file is given")
        self.augment_clip = tuple(float(c) for c in self.augment_clip)
        self.device = check_device(self.device, f"train.device of {self.model}")
        self.precision = check_precision(self.precision, f"train.precision of {self.model}")
        if self.use_gpu not in ("auto", True, False):
            raise ConfigError(f"train.use_gpu must be auto, true or false, got {self.use_gpu!r}")
        self.store = str(Path(self.store).resolve())
        if self.augmentations:
            self.augmentations = str(Path(self.augmentations).resolve())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSpec":
        return cls(**d)

    def with_(self, **changes) -> "TrainSpec":
        d = self.to_dict()
        d.update(changes)
        return TrainSpec.from_dict(d)

    def with_seed(self, seed: int) -> "TrainSpec":
        return self.with_(seed=int(seed))

    def steps_per_epoch(self, n_rows: int, world_size: int = 1) -> int:
        return max(1, math.ceil(n_rows / (self.batch_size * max(1, world_size))))

    def epochs_for(self, n_rows: int, world_size: int = 1) -> int:
        """Epochs of this run over ``n_rows`` train rows: ``epochs``, or as many as ``max_steps`` needs (at most
        ``max_epochs``)."""
        if self.max_steps is None:
            return self.epochs
        n = max(1, math.ceil(self.max_steps / self.steps_per_epoch(n_rows, world_size)))
        return n if self.max_epochs is None else min(n, self.max_epochs)

    def min_steps_for(self, n_rows: int, world_size: int = 1) -> int:
        """The steps before early stopping may act: ``min_steps``, cut in the proportion ``max_epochs`` cuts the
        step budget on ``n_rows`` train rows (so it stays the same share of the run)."""
        if self.max_steps is None or self.max_epochs is None:
            return self.min_steps
        budget = self.max_epochs * self.steps_per_epoch(n_rows, world_size)
        return self.min_steps if budget >= self.max_steps else self.min_steps * budget // self.max_steps

    @property
    def run_name(self) -> str:
        return f"{self.model}-seed{self.seed}"

    def training_meta(self) -> dict:
        """The optimisation settings, as the model folder records them (architecture and paths apart)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("arch", "store", "augmentations", "device")}


def spec_from_params(params: dict, model: str, *, store: str = "data/store", augmentations: str | None = None,
                     seed: int | None = None, **overrides) -> TrainSpec:
    """Build a TrainSpec from the ``train`` and ``models.<model>`` sections (checked by sctab.params_schema, so
    a misspelt key is an error) and ``overrides`` (an experiment's or a tuning trial's settings)."""
    if model in BASELINES:
        raise ConfigError(f"{model} is a baseline: it has no TrainSpec (make_spec builds its BaselineSpec)")
    kwargs = {**as_dict(section(params, "train")), **as_dict(_model_section(params, model))}
    if kwargs["epochs"] is None:
        del kwargs["epochs"]  # TrainSpec's default, or as many as max_steps needs
    if kwargs.get("augment"):
        kwargs["augmentations"] = augmentations
    kwargs["seed"] = int(section(params, "seed") if seed is None else seed)
    known = {f.name for f in fields(TrainSpec)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown training setting(s) {bad}")
    if "epochs" in overrides and "max_steps" not in overrides:  # an experiment's epochs replace the step budget
        kwargs["max_steps"] = kwargs["max_epochs"] = None
    kwargs.update(overrides)
    if kwargs.get("augment") and not kwargs.get("augmentations"):  # switched on by an override
        kwargs["augmentations"] = augmentations
    return TrainSpec(model=model, store=store, **kwargs)


@dataclass
class BaselineSpec:
    """What one baseline fit needs: its settings (``models.<model>`` of params plus overrides), the store and,
    for XGBoost, the pca stage's output. Settings are checked when the fit starts, inside its tracked run, so a
    tuning study records a bad trial as a failed run."""

    model: str
    store: str
    config: dict = field(default_factory=dict)
    pca_dir: str | None = None
    seed: int = 0
    threads: int | None = None       # XGBoost nthread / CellTypist n_jobs; None = the config's
    report_every: int = 10           # XGBoost: intermediate validation scores every n rounds (Tune's ASHA)

    def __post_init__(self):
        if self.model not in BASELINES:
            raise ConfigError(f"unknown baseline {self.model!r}; choose one of {', '.join(BASELINES)}")
        self.store = str(Path(self.store).resolve())
        if self.pca_dir:
            self.pca_dir = str(Path(self.pca_dir).resolve())

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "BaselineSpec":
        return BaselineSpec(**{**self.to_dict(), **changes})

    def with_seed(self, seed: int) -> "BaselineSpec":
        """The same fit with another seed (the library's own seed setting and the spec's)."""
        return self.with_(seed=int(seed), config={**self.config, "seed": int(seed)})

    @property
    def run_name(self) -> str:
        return self.model

    def training_meta(self) -> dict:
        return {}  # the settings are the model's own config (model.yaml ``config``)


def _model_section(params, model: str):
    """The typed ``models.<model>`` section; a ConfigError naming the models the params know otherwise."""
    if model not in (*MODEL_NAMES, *BASELINES):
        raise ConfigError(f"params have no models.{model} section (models: {', '.join((*MODEL_NAMES, *BASELINES))})")
    return section(params, f"models.{model}")


def make_spec(params: dict, model: str, *, store: str = "data/store", augmentations: str | None = None,
              pca_dir: str | None = None, seed: int | None = None, overrides: dict | None = None,
              **settings) -> TrainSpec | BaselineSpec:
    """The spec of any kind: a :class:`TrainSpec` for the neural kinds, a :class:`BaselineSpec` otherwise.

    ``overrides`` are model settings (a tuning trial's config, a sweep point's); ``settings`` are runner
    settings of the neural kinds (num_workers, cpus_per_worker, ...)."""
    if model in BASELINES:
        # None = the library's default (or no cap), as if the key were left out
        config = {k: v for k, v in as_dict(_model_section(params, model)).items() if v is not None}
        config.update(overrides or {})
        return BaselineSpec(model=model, store=store, config=config, pca_dir=pca_dir,
                            seed=int(config.get("seed", 0) if seed is None else seed), **settings)
    changes = {**settings, **(overrides or {})}
    if "seed" in changes:  # a sweep point's seed
        seed = changes.pop("seed") if seed is None else seed
        changes.pop("seed", None)
    return spec_from_params(params, model, store=store, augmentations=augmentations, seed=seed, **changes)
