"""The params schema: one typed, frozen dataclass per params.yaml section, built and checked once.

Why: a misspelt key deep in a section used to be caught only where some module happened to read it, and
defaults were repeated wherever a key was read. Here each key has one default, and the paper's value is noted
beside it where the paper gives one (Methods). :func:`build_params` turns the loaded YAML into :class:`Params`,
and an unknown or mistyped key is a ConfigError that names its dotted path. params.yaml stays the file DVC
tracks; this only reads it.

Defaults are the paper's values where the paper gives them, else the project's choice. The profiles
(conf/profiles/) set every key anyway, so a default matters only to a hand-written params file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


class ConfigError(ValueError):
    """A parameter file or profile is missing, unknown or malformed."""


# ------------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class CensusParams:
    """Where the cells come from: the CELLxGENE census, the embedded synthetic one, or the user's .h5ad files."""

    source: Literal["cellxgene", "embedded", "h5ad"] = "cellxgene"
    version: Optional[str] = "2023-05-15"                # paper: the 2023-05-15 LTS census
    uri: Optional[str] = None                            # a local SOMA copy; None: the public census
    data: str = "data/census"                            # what DVC watches for the source's data
    obs_value_filter: Optional[str] = None               # a SOMA value filter: a census slice
    organism: str = "homo_sapiens"                       # paper
    x_layer: str = "raw"                                 # paper: raw counts
    chunk_size: int = 4096
    # the h5ad source (reference profiles)
    inputs: list[str] = field(default_factory=list)
    label_column: Optional[str] = None
    label_map: Optional[str] = None
    donor_columns: list[str] = field(default_factory=lambda: ["dataset_id", "donor_id"])
    layer: Optional[str] = None
    gene_column: Optional[str] = None
    allow_non_integer: bool = False


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded census generator (a test bed, not biology)."""

    seed: int = 0
    n_genes: int = 1500
    n_datasets: int = 12
    donors_per_dataset: list[int] = field(default_factory=lambda: [4, 9])
    cells_per_donor: list[int] = field(default_factory=lambda: [250, 700])
    secondary_fraction: float = 0.15
    non10x_fraction: float = 0.25
    n_noncoding_genes: Optional[int] = None              # None: 10% of n_genes
    ancestor_lfc: float = 1.0
    own_lfc: float = 0.1
    module_lfc: float = 2.5
    state_lfc: float = 1.2
    donor_sd: float = 0.35
    assay_sd: float = 0.3
    dataset_sd: float = 0.15
    library_size: float = 600.0
    extra_types: int = 0


@dataclass(frozen=True)
class OntologyParams:
    cl_version: str = "v2026-03-26"                      # paper: the CL release of the 2023-05-15 census


PAPER_ASSAYS = ["10x 5' v2", "10x 3' v3", "10x 3' v2", "10x 5' v1", "10x 3' v1", "10x 3' transcription profiling",
                "10x 5' transcription profiling"]


@dataclass(frozen=True)
class FiltersParams:
    """The paper's six filters (Methods, "Data collection and preprocessing")."""

    primary_only: bool = True                            # paper
    assays: list[str] = field(default_factory=lambda: list(PAPER_ASSAYS))   # paper: 10x only
    root_term: str = "CL:0000003"                        # paper: native cell
    min_ancestors: int = 7                               # paper
    min_cells_per_type: int = 5000                       # paper
    min_donors_per_type: int = 30                        # paper


@dataclass(frozen=True)
class GenesParams:
    biotype: str = "protein_coding"                      # paper: 19,331 protein-coding genes
    feature_list: Optional[str] = None                   # a file of gene ids, in model-input order, instead
    restrict_to_inputs: bool = False                     # h5ad source: keep only genes every input has


@dataclass(frozen=True)
class SplitParams:
    by: Literal["donor", "cell"] = "donor"               # paper: donor-wise
    seed: int = 1
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.70, "val": 0.15, "test": 0.15})  # paper
    max_attempts: int = 100
    subsample_fractions: list[float] = field(default_factory=lambda: [0.15, 0.30, 0.50, 0.70, 1.00])  # paper Fig. 2


@dataclass(frozen=True)
class StoreParams:
    target_sum: float = 10_000                           # paper: size factors to 10,000 counts, then log1p
    row_group_size: int = 1024
    truncate_to_row_group: bool = False
    chunk_size: int = 4096
    layout: Literal["dense", "both"] = "dense"             # both: dense parts + sparse/ for the sparse loader


@dataclass(frozen=True)
class ValidateParams:
    split_fraction_tolerance: float = 0.05
    row_sum_rtol: float = 0.01


@dataclass(frozen=True)
class AugmentParams:
    """Methods, "Calculation of augmentation vectors"."""

    enabled: bool = True
    n_cells: int = 500_000                               # paper
    zero_threshold: float = 0.25                         # paper
    clamp: float = 1.5                                   # paper
    n_clusters: int = 50                                 # paper
    min_cluster_size: int = 2000                         # paper
    n_vectors: int = 5000                                # paper
    max_pairs_per_type: Optional[int] = None             # not in the paper: every donor pair of a type
    seed: int = 0
    minibatch_above: int = 100_000                       # not in the paper: MiniBatchKMeans beyond this many vectors


@dataclass(frozen=True)
class PcaParams:
    n_components: int = 256                              # paper (XGBoost's input)
    batch_size: int = 4096
    blas_threads: Optional[int] = None
    shrink_to_train: bool = False                        # reference profiles: fewer train rows than components


@dataclass(frozen=True)
class TrainParams:
    """The runner (Ray Train) and data loading, shared by the neural models."""

    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: Union[str, bool] = "auto"
    device: str = "auto"
    precision: Union[str, int] = "32"
    max_failures: int = 3
    checkpoints_to_keep: int = 2
    loader: Literal["stream", "sparse", "memory", "merlin"] = "stream"
    block_row_groups: int = 8
    eval_batch_size: int = 4096
    augment_clip: list[float] = field(default_factory=lambda: [0.0, 9.0])   # paper


@dataclass(frozen=True)
class NeuralModelParams:
    """One neural model's training (Methods, "Model details")."""

    batch_size: int = 2048                               # paper
    lr: float = 0.005                                    # paper: scTab 0.005, MLP 0.002, linear 0.0005
    weight_decay: float = 0.05                           # paper: scTab and MLP 0.05, linear 0.01
    lr_gamma: float = 0.9                                # paper: StepLR 0.9 per epoch
    epochs: Optional[int] = None                         # None: 50, or as many as max_steps needs
    patience: Optional[int] = None
    max_steps: Optional[int] = None                      # a budget in optimiser steps instead of epochs
    min_steps: int = 0
    max_epochs: Optional[int] = None                     # caps max_steps in epochs (min_steps in proportion)
    val_smoothing: float = 0.0
    warmup_steps: int = 0
    augment: bool = False                                # paper: scTab and MLP with augmentation
    arch: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs is not None and self.max_steps is not None:
            raise ConfigError("give either epochs or max_steps (a budget in optimiser steps), not both")
        if self.max_epochs is not None and self.max_steps is None:
            raise ConfigError("max_epochs caps a step budget (max_steps), and there is none; with an epoch count, "
                              "set epochs instead")


@dataclass(frozen=True)
class XGBoostParams:
    """Methods, "XGBoost model"."""

    n_estimators: int = 800                              # paper
    eta: float = 0.05                                    # paper
    subsample: float = 0.75                              # paper
    max_depth: int = 10                                  # paper
    early_stopping_rounds: Optional[int] = 10            # paper; null: no early stopping
    tree_method: str = "hist"
    device: str = "auto"
    nthread: int = 1
    num_workers: int = 1
    seed: int = 0
    # more booster settings a tuned config may carry (XGBoost names); None: XGBoost's own default
    min_child_weight: Optional[float] = None
    colsample_bytree: Optional[float] = None
    colsample_bylevel: Optional[float] = None
    colsample_bynode: Optional[float] = None
    gamma: Optional[float] = None
    reg_lambda: Optional[float] = None
    reg_alpha: Optional[float] = None
    max_bin: Optional[int] = None
    max_delta_step: Optional[float] = None
    grow_policy: Optional[str] = None
    max_leaves: Optional[int] = None


@dataclass(frozen=True)
class CellTypistParams:
    """Methods, "CellTypist model"."""

    n_cells: int = 1_500_000                             # paper
    feature_selection: bool = True                       # paper
    use_SGD: bool = True                                 # paper
    mini_batch: bool = True                              # paper
    batch_number: int = 1500                             # paper
    batch_size: int = 1000
    epochs: int = 10                                     # paper
    with_mean: bool = False                              # paper
    top_genes: int = 300
    alpha: float = 0.0001
    balance_cell_type: bool = False
    n_jobs: int = 1
    max_memory_gib: Optional[float] = None
    seed: int = 0
    # the logistic-regression path (use_SGD: false); None: celltypist's own default
    C: Optional[float] = None
    solver: Optional[str] = None
    max_iter: Optional[int] = None


@dataclass(frozen=True)
class ModelsParams:
    linear: NeuralModelParams = field(default_factory=lambda: NeuralModelParams(lr=0.0005, weight_decay=0.01))
    mlp: NeuralModelParams = field(default_factory=lambda: NeuralModelParams(lr=0.002, augment=True))
    sctab: NeuralModelParams = field(default_factory=lambda: NeuralModelParams(augment=True))
    xgboost: XGBoostParams = field(default_factory=XGBoostParams)
    celltypist: CellTypistParams = field(default_factory=CellTypistParams)


@dataclass(frozen=True)
class EnsembleParams:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])   # paper: 5 members
    spread_seeds: int = 1


@dataclass(frozen=True)
class TuneParams:
    models: list[str] = field(default_factory=lambda: ["xgboost", "celltypist"])
    num_samples: Union[int, dict[str, int]] = field(default_factory=dict)   # per model; 8 where unnamed

    def samples_for(self, model: str) -> int:
        """Trials of ``model``'s study."""
        n = self.num_samples
        return int(n.get(model, 8) if isinstance(n, dict) else n)
    max_concurrent: int = 2
    cpus_per_trial: int = 1
    gpus_per_trial: Union[str, float] = "auto"
    seed: int = 0
    report_every: int = 10
    asha: dict[str, int] = field(default_factory=lambda: {"grace_period": 2, "reduction_factor": 2})
    in_dag: bool = False
    time_budget_s: Optional[float] = None


@dataclass(frozen=True)
class ModelSizeParams:
    model: str = "sctab"
    widths: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class DataSizeParams:
    models: list[str] = field(default_factory=lambda: ["sctab", "linear"])
    schemes: list[str] = field(default_factory=lambda: ["cells", "donors"])
    fractions: list[int] = field(default_factory=lambda: [15, 30, 50, 70, 100])   # paper Fig. 2
    equal_steps: bool = False
    per_organ: bool = True                               # also score each organ system (paper Fig. 2c)


@dataclass(frozen=True)
class AugmentationExperimentParams:
    model: str = "sctab"
    subset: str = "donors_30"
    epochs: Optional[int] = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])   # paper: 4
    r2_cells: int = 100_000


@dataclass(frozen=True)
class OrganParams:
    models: list[str] = field(default_factory=lambda: ["sctab", "linear"])
    tissue: str = "lung"


@dataclass(frozen=True)
class ExperimentsParams:
    epochs: Optional[int] = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    augment: bool = False                                # paper: the Fig. 2 models without augmentation
    max_concurrent: int = 2
    cpus_per_trial: int = 1
    gpus_per_trial: Union[str, float] = "auto"
    max_failures: int = 2
    model_size: ModelSizeParams = field(default_factory=ModelSizeParams)
    data_size: DataSizeParams = field(default_factory=DataSizeParams)
    augmentation: AugmentationExperimentParams = field(default_factory=AugmentationExperimentParams)
    organ: OrganParams = field(default_factory=OrganParams)


@dataclass(frozen=True)
class RegistryParams:
    models: dict[str, str] = field(default_factory=lambda: {
        "sctab": "sctab-ensemble", "linear": "sctab-linear", "mlp": "sctab-mlp", "xgboost": "sctab-xgboost",
        "celltypist": "sctab-celltypist"})
    alias: str = "challenger"
    champion: Literal["best", "sctab"] = "sctab"
    uncertainty_threshold: float = 0.5
    coverage: float = 0.9
    max_labels: int = 5
    min_probability_precision: float = 0.95
    threshold_max_cells: int = 200_000


@dataclass(frozen=True)
class Params:
    """A whole params file."""

    profile: str
    census: CensusParams
    ontology: OntologyParams
    filters: FiltersParams
    split: SplitParams
    store: StoreParams
    seed: int = 0
    synthetic: Optional[SyntheticParams] = None
    genes: GenesParams = field(default_factory=GenesParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    pca: PcaParams = field(default_factory=PcaParams)
    train: TrainParams = field(default_factory=TrainParams)
    models: ModelsParams = field(default_factory=ModelsParams)
    ensemble: EnsembleParams = field(default_factory=EnsembleParams)
    tune: TuneParams = field(default_factory=TuneParams)
    experiments: ExperimentsParams = field(default_factory=ExperimentsParams)
    registry: RegistryParams = field(default_factory=RegistryParams)


# ------------------------------------------------------------------------------------------------ building
def build_params(raw: Any, source: str = "params") -> Params:
    """The typed :class:`Params` of a loaded params file; ConfigError naming the first bad key."""
    return build(Params, raw, source)


def build(cls: type, raw: Any, where: str):
    """``cls`` (a schema dataclass) from a mapping: unknown keys, missing required keys and wrong types are
    ConfigErrors naming ``where.key``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: section or key {name!r} is missing")
    try:
        return cls(**values)
    except ConfigError as e:  # a section's own check (__post_init__)
        raise ConfigError(f"{where}: {e}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is none of {_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_convert(args[0], k, where): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"the schema has a type it cannot check at {where}: {tp!r}")
    raise ConfigError(f"{where} must be {_name(tp)}, got {value!r}")


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _name(tp: Any) -> str:
    if tp in _WORDS:
        return _WORDS[tp]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def defaults_of(cls: type) -> dict:
    """Every key of a section with its default (None where the key is required)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


# ------------------------------------------------------------------------------------------------ reading
_PARAMS_FIELDS = {f.name: f for f in dataclasses.fields(Params)}
_PARAMS_HINTS: dict[str, Any] = {}


def section(params: Params | dict | None, path: str) -> Any:
    """The typed value at ``path`` (``"split"``, ``"models.sctab"``, ``"experiments.organ.tissue"``, ``"seed"``)
    of a :class:`Params` or of a loaded params dict.

    Why: the library reads every setting through here, so each key has one default (this module's) and one
    type. A dict may be partial (a test's, a hand-written one): a section it lacks comes back with its
    defaults (``None`` for ``synthetic`` and ``profile``); a key it has is checked as :func:`build_params` does.
    """
    head, _, rest = path.partition(".")
    if head not in _PARAMS_FIELDS:
        raise ConfigError(f"params have no section {head!r}; sections: {', '.join(_PARAMS_FIELDS)}")
    if isinstance(params, Params):
        node = getattr(params, head)
    else:
        if not _PARAMS_HINTS:
            _PARAMS_HINTS.update(typing.get_type_hints(Params))
        raw = (params or {}).get(head)
        hint = _PARAMS_HINTS[head]
        if raw is not None:
            node = _convert(hint, raw, head)
        elif dataclasses.is_dataclass(hint):
            node = build(hint, {}, head)
        else:
            f = _PARAMS_FIELDS[head]
            node = f.default_factory() if f.default_factory is not dataclasses.MISSING else (
                None if f.default is dataclasses.MISSING else f.default)
    for part in rest.split(".") if rest else []:
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            raise ConfigError(f"params have no {path} section or key")
        node = getattr(node, part)
    return node


def as_dict(value: Any) -> Any:
    """A section (or any schema value) as plain dicts and lists: for code that writes params back or logs them."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
