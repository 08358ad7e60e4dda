"""The registered model as MLflow sees it: a pyfunc that takes raw counts and returns labels.

Input: a DataFrame whose columns are Ensembl gene ids and whose values are raw counts (one row per
cell; genes the model needs and the request lacks count as zero). A column that is not a model gene, or
values that are not raw counts, are refused with MLflow's invalid-input error (HTTP 400) naming them. Output: one
row per cell with label, cell_type_ontology_term_id, probability, uncertainty, coarse_label and
coarse_ontology_term_id. The same :class:`sctab.annotation.Annotator` does the work as for
``sctab annotate``, so served labels equal the CLI's.

It is logged as "models from code" (``model_code.py``), so loading it unpickles no Python object.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from sctab.allocator import keep_freed_memory
from sctab.annotation.annotator import Annotator
from sctab.annotation.bundle import Bundle

BUNDLE = "bundle"
DEVICE_ENV = "SCTAB_DEVICE"
MODEL_CODE = Path(__file__).with_name("model_code.py")


class SctabAnnotatorModel(mlflow.pyfunc.PythonModel):
    """Raw counts by gene id in, labels with probability and uncertainty out."""

    def load_context(self, context):
        keep_freed_memory()  # served batches reuse freed memory (see sctab.allocator; SCTAB_MALLOC=system: off)
        # the bundle was written by our own registration; a CellTypist member is trusted here because the
        # registry holds only what `sctab register` / the register stage put there. The members run on
        # SCTAB_DEVICE (auto, cpu, cuda[:N]; default auto = the GPU when torch can use one), served or loaded.
        bundle = Bundle.load(context.artifacts[BUNDLE], trust_pickle=True,
                             device=os.environ.get(DEVICE_ENV, "auto"))
        self.annotator = Annotator(bundle=bundle)
        self.position = {g: i for i, g in enumerate(bundle.space.genes)}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        counts = request_counts(model_input, self.annotator.genes, self.position)
        out = self.annotator.predict_counts(counts)
        out.index = model_input.index
        return out


def _few(names: list, k: int = 5) -> str:
    shown = ", ".join(str(n) for n in names[:k])
    return f"{len(names)} ({shown}{', ...' if len(names) > k else ''})"


def _bad_request(problems: list[str], n_cells: int, n_cols: int):
    """MLflow's invalid-input error (HTTP 400 from `mlflow models serve`): the problems, no trace, no paths."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(f"request of {n_cells} cells x {n_cols} columns: " + "; ".join(problems),
                           error_code=INVALID_PARAMETER_VALUE)


def request_counts(frame, genes: list[str], position: dict[str, int]) -> np.ndarray:
    """A request as (cells, model genes) float32 raw counts, or an MLflow invalid-input error naming every
    problem at once: columns that are not model genes, non-numeric, missing, negative or non-integer values."""
    if not isinstance(frame, pd.DataFrame):
        try:
            frame = pd.DataFrame(frame)
        except Exception as e:  # noqa: BLE001 - any shape pandas cannot read is the client's
            raise _bad_request([f"not a table of counts ({type(e).__name__})"], 0, 0) from None
    n, cols = len(frame), [str(c) for c in frame.columns]
    problems = []
    if n == 0:
        problems.append("no cells (rows) in the request")
    unknown = [c for c in cols if c not in position]
    if unknown:
        problems.append(f"columns that are not genes of this model: {_few(unknown)}; send raw counts with the "
                        f"model's Ensembl gene ids as columns (it has {len(genes)} genes, e.g. {genes[0]}); "
                        "genes left out count as zero")
    known = [c for c in frame.columns if str(c) in position]
    if not known and not unknown:
        problems.append(f"no gene columns (the model has {len(genes)} genes, e.g. {genes[0]})")
    values = np.zeros((n, 0))
    if known:
        sub = frame[known]
        try:
            values = sub.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            numeric = sub.apply(pd.to_numeric, errors="coerce")
            text = numeric.isna() & sub.notna()
            problems.append(f"columns with values that are not numbers: "
                            f"{_few([str(c) for c in text.columns[text.any(axis=0)]])}")
            values = numeric.mask(text, 0).to_numpy(dtype=np.float64, na_value=np.nan)  # reported once
        with np.errstate(invalid="ignore"):
            for what, bad in (("missing or infinite values", ~np.isfinite(values)),
                              ("negative values", values < 0),
                              ("values that are not whole numbers (raw counts are integers)",
                               np.isfinite(values) & (values != np.round(values)))):
                cols_bad = np.flatnonzero(bad.any(axis=0))
                if cols_bad.size:
                    problems.append(f"columns with {what}: {_few([str(known[j]) for j in cols_bad])}, in "
                                    f"{int(bad.any(axis=1).sum())} of the {n} cells")
    if problems:
        raise _bad_request(problems, n, len(cols))
    counts = np.zeros((n, len(genes)), dtype=np.float32)
    counts[:, [position[str(c)] for c in known]] = values
    return counts


def signature():
    """Output columns only: no input schema, so that MLflow passes a request as it came and
    :func:`request_counts` can name what is wrong with it (MLflow's own check silently drops unknown columns
    and stops at the first mistyped one). The model's genes are in the bundle (``var.parquet``)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    outputs = Schema([ColSpec("string", "label"), ColSpec("string", "cell_type_ontology_term_id"),
                      ColSpec("double", "probability"), ColSpec("double", "uncertainty"),
                      ColSpec("string", "coarse_label"), ColSpec("string", "coarse_ontology_term_id")])
    return ModelSignature(inputs=None, outputs=outputs)
