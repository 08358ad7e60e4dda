"""The scale bench's sizes (x<factor>, c<cells>, @<genes>) and the params of each size's workspace: the profile
with the size's census and one-epoch training budgets.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from sctab.models import MODEL_NAMES
from sctab.params_schema import section

REPO = Path(__file__).resolve().parents[4]

#: the paper's census (Methods): cells after the filters, training cells, genes
PAPER = {"cells_in": 22_200_000, "train_cells": 15_200_000, "n_genes": 19_331}
#: stages that draw a sample of the training cells; the bench sets the sample to every training cell (so the
#: curve measures the cost per sampled cell) and extrapolates to the paper's sample: (parameter, paper size)
SAMPLED = {"augment": ("augment.n_cells", 500_000), "train_celltypist": ("models.celltypist.n_cells", 1_500_000)}
#: fixed budgets of the training stages (one epoch for the neural models)
XGBOOST_ROUNDS = 5
CELLTYPIST_EPOCHS = 1
SCTAB_MEMBERS = 1
ALL_CELLS = 1_000_000_000  # "every training cell" for a sample size parameter
#: share of this machine's RAM the CellTypist fit may plan for in a scale run (models.celltypist.max_memory_gib):
#: uncapped, its dense-free sparse fit still needs ~40 B per non-zero, more than this machine has at 500,000 cells
#: in; where the cap binds, the stage is fitted on the cells it trained on (its report's train_cells)
CELLTYPIST_RAM_SHARE = 0.4


class ScaleError(RuntimeError):
    """A size, stage or option the scale bench cannot run, or a stage that failed (with its log's tail)."""


# ---------------------------------------------------------------------------------------------- sizes, params


@dataclass(frozen=True)
class Size:
    """A census size: ``factor`` times the profile's cells per donor, at ``n_genes`` (None: the profile's); or
    ``cells`` cells in all (the profile's sizing rule picks datasets, donors and cells per donor, as
    ``sctab params --cells`` does)."""

    factor: float
    n_genes: int | None = None
    cells: int | None = None

    @property
    def label(self) -> str:
        if self.cells is not None:
            c = self.cells
            f = f"c{c // 1000}k" if c % 1000 == 0 else f"c{c}"
        else:
            f = f"x{self.factor:g}"
        return f if self.n_genes is None else f"{f}@{self.n_genes}g"

    @classmethod
    def parse(cls, text: str) -> "Size":
        """``x4`` (4 x the cells), ``x1@19331`` (1 x the cells at 19,331 genes) or ``c500k`` / ``c500000``
        (about 500,000 cells in the census)."""
        t = text.strip()
        body, _, genes = t.partition("@")
        cells = None
        try:
            if body.startswith("c"):
                num = body[1:].lower()
                mult = 1000 if num.endswith("k") else 1_000_000 if num.endswith("m") else 1
                cells = int(round(float(num.rstrip("km")) * mult))
                factor = 1.0
            elif body.startswith("x"):
                factor = float(body[1:])
            else:
                raise ValueError
            n_genes = int(genes.rstrip("g")) if genes else None
        except ValueError:
            raise ScaleError(f"size {text!r}: expected x<factor>, c<cells> or either @<genes>, e.g. x4, c500k or "
                             "x1@19331") from None
        if not factor > 0 or (n_genes is not None and n_genes < 50) or (cells is not None and cells < 1000):
            raise ScaleError(f"size {text!r}: the factor must be > 0, the cells at least 1,000 and the genes at "
                             "least 50")
        return cls(factor, n_genes, cells)


def set_dotted(params: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` of a params dict (a profile being rewritten) to ``value``; the path must exist up to its
    last key."""
    node = params
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            raise ScaleError(f"parameter {dotted!r}: {p!r} is not a section of the profile")
        node = node[p]
    node[parts[-1]] = value


def budget_overrides(params: dict) -> dict:
    """The scale run's training budgets: one epoch per neural model (no step budget), one scTab ensemble
    member (the members train one after the other: the stage's time per member; the memory is one member's),
    a fixed number of XGBoost rounds without early stopping, one CellTypist epoch, and the sampled stages on
    every training cell (what their cost per sampled cell is measured on)."""
    out = {}
    for name in MODEL_NAMES:  # the neural kinds
        out[f"models.{name}.epochs"] = 1
        if section(params, f"models.{name}.max_steps") is not None:
            out[f"models.{name}.max_steps"] = out[f"models.{name}.max_epochs"] = None
    out["models.xgboost.n_estimators"] = XGBOOST_ROUNDS
    out["models.xgboost.early_stopping_rounds"] = None
    out["models.celltypist.epochs"] = CELLTYPIST_EPOCHS
    out["models.celltypist.max_memory_gib"] = celltypist_budget_gib(params)
    seeds = section(params, "ensemble.seeds")
    if seeds:
        out["ensemble.seeds"] = list(seeds)[:SCTAB_MEMBERS]
        out["ensemble.spread_seeds"] = 1
    for key, _ in SAMPLED.values():
        out[key] = ALL_CELLS
    return out


def celltypist_budget_gib(params: dict, ram_bytes: float | None = None) -> float:
    """The CellTypist fit's memory budget in a scale run: CELLTYPIST_RAM_SHARE of this machine's RAM, or the
    profile's own cap when smaller (GiB, one decimal)."""
    ram = float(ram_bytes if ram_bytes is not None else psutil.virtual_memory().total)
    mine = math.floor(ram * CELLTYPIST_RAM_SHARE / 2**30 * 10) / 10
    own = section(params, "models.celltypist.max_memory_gib")
    return float(min(mine, own)) if own is not None else float(mine)


def size_params(profile: dict, size: Size, overrides: dict | None = None) -> dict:
    """The profile with the size's census (cells per donor x factor, genes) and the scale budgets, then
    ``overrides`` (dotted keys, e.g. from ``--set``) on top."""
    params = copy.deepcopy(profile)
    syn = section(params, "synthetic")
    if syn is None or section(params, "census.source") != "embedded":
        raise ScaleError(f"profile {section(params, 'profile')!r} does not build the embedded synthetic census; "
                         "the scale bench needs census.source: embedded and a synthetic section")
    if size.cells is not None:
        from sctab.census.synthetic import SyntheticCensusConfig, scaled_to_cells

        census = scaled_to_cells(SyntheticCensusConfig.from_params(params), size.cells)
    else:
        lo, hi = syn.cells_per_donor
        census = {"cells_per_donor": [max(1, round(lo * size.factor)), max(1, round(hi * size.factor))]}
    if size.n_genes is not None:
        census["n_genes"] = int(size.n_genes)
    for k, v in {**{f"synthetic.{k}": v for k, v in census.items()}, **budget_overrides(params),
                 **(overrides or {})}.items():
        set_dotted(params, k, v)
    return params


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs (YAML values) from ``--set``."""
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ScaleError(f"--set {item!r}: expected dotted.key=value")
        out[key.strip()] = yaml.safe_load(val)
    return out


# ---------------------------------------------------------------------------------------------- entry

DEFAULT_SIZES = "x1,x2,x4,x1@19331"
QUICK_SIZES = "x0.1,x0.2"
QUICK_STAGES = "train_linear"
#: small enough for a census of a tenth of the tiny profile's cells
QUICK_SET = {"synthetic.n_genes": 400, "filters.min_cells_per_type": 20, "filters.min_donors_per_type": 3}
