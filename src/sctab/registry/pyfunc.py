"""The registered model as MLflow sees it: a pyfunc that takes raw counts and returns labels.

Input: a DataFrame whose columns are Ensembl gene ids and whose values are raw counts (one row per
cell; genes the model needs and the request lacks count as zero, other columns are ignored). Output: one
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

from sctab.annotation.annotator import Annotator
from sctab.annotation.bundle import Bundle
from sctab.annotation.errors import AnnotateError

BUNDLE = "bundle"
DEVICE_ENV = "SCTAB_DEVICE"
MODEL_CODE = Path(__file__).with_name("model_code.py")


class SctabAnnotatorModel(mlflow.pyfunc.PythonModel):
    """Raw counts by gene id in, labels with probability and uncertainty out."""

    def load_context(self, context):
        # the bundle was written by our own registration; a CellTypist member is trusted here because the
        # registry holds only what `sctab register` / the register stage put there. The members run on
        # SCTAB_DEVICE (auto, cpu, cuda[:N]; default auto = the GPU when torch can use one), served or loaded.
        bundle = Bundle.load(context.artifacts[BUNDLE], trust_pickle=True,
                             device=os.environ.get(DEVICE_ENV, "auto"))
        self.annotator = Annotator(bundle=bundle)
        self.position = {g: i for i, g in enumerate(bundle.genes)}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        genes = self.annotator.genes
        cols = [c for c in model_input.columns if str(c) in self.position]
        if not cols:
            raise AnnotateError(f"none of the request's {model_input.shape[1]} columns is one of the model's "
                                f"{len(genes)} genes (Ensembl ids such as {genes[0]})")
        values = model_input[cols].to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
            raise AnnotateError("the request must hold raw counts: finite, non-negative integers")
        counts = np.zeros((len(model_input), len(genes)), dtype=np.float32)
        counts[:, [self.position[str(c)] for c in cols]] = values
        out = self.annotator.predict_counts(counts)
        out.index = model_input.index
        return out


def signature(genes: list[str]):
    """Optional integer (long) columns per gene, raw counts -> the six output columns."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("long", g, required=False) for g in genes])
    outputs = Schema([ColSpec("string", "label"), ColSpec("string", "cell_type_ontology_term_id"),
                      ColSpec("double", "probability"), ColSpec("double", "uncertainty"),
                      ColSpec("string", "coarse_label"), ColSpec("string", "coarse_ontology_term_id")])
    return ModelSignature(inputs=inputs, outputs=outputs)
