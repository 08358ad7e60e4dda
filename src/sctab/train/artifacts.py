"""A trained model as a folder: everything needed to load it and map its outputs, nothing pickled.

    model.pt          state dict (torch.load(weights_only=True))
    model.yaml        model name, architecture, input/output sizes, normalisation, lineage
    var.parquet       the genes in input order (feature_id, feature_name)
    cell_type.parquet the class lookup (row = output index, column `label`)
    metrics.json      best epoch, validation/test metrics, throughput
    history.csv       one row per epoch (DVC plots, MLflow curves)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from sctab.data.store import Store
from sctab.io import atomic_dir
from sctab.models import build_model

FILES = ("model.pt", "model.yaml", "var.parquet", "cell_type.parquet")


class ModelFolderError(ValueError):
    """A trained-model folder is incomplete or does not match its description."""


@dataclass
class TrainedModel:
    model: torch.nn.Module
    meta: dict
    var: pd.DataFrame
    classes: list[str]
    path: Path


def save_model_folder(out_dir: str | Path, *, model_name: str, arch: dict, state_dict: dict, store: Store,
                      meta: dict, metrics: dict, history: list[dict]) -> Path:
    """Write the folder atomically (it appears complete or not at all)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        torch.save(state_dict, tmp / "model.pt")
        desc = {"model": model_name, "arch": arch, "n_genes": store.n_genes, "n_classes": store.n_classes,
                "normalisation": {"target_sum": float(store.report().get("target_sum", 10000.0)), "log1p": True},
                **meta}
        (tmp / "model.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
        store.var[["feature_id", "feature_name"]].to_parquet(tmp / "var.parquet", index=False)
        store.lookup("cell_type")[["label"]].to_parquet(tmp / "cell_type.parquet", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    return out_dir


def load_model_folder(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the network from a folder written by ``save_model_folder`` and load its weights safely."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise ModelFolderError(f"model folder {path} lacks {', '.join(missing)}")
    meta = yaml.safe_load((path / "model.yaml").read_text())
    var = pd.read_parquet(path / "var.parquet")
    classes = pd.read_parquet(path / "cell_type.parquet")["label"].astype(str).tolist()
    if len(var) != meta["n_genes"] or len(classes) != meta["n_classes"]:
        raise ModelFolderError(f"{path}: model.yaml says {meta['n_genes']} genes / {meta['n_classes']} classes, "
                               f"var.parquet has {len(var)} and cell_type.parquet {len(classes)}")
    model = build_model(meta["model"], meta["n_genes"], meta["n_classes"], **(meta.get("arch") or {}))
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return TrainedModel(model=model.to(device).eval(), meta=meta, var=var, classes=classes, path=path)
