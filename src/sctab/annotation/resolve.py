"""Turn what a user types after ``--model`` into a loaded :class:`Annotator`.

Accepted: ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (the MLflow registry of
``MLFLOW_TRACKING_URI`` or the project's local store), ``runs:/<run>/<path>``, a downloaded MLflow model
folder (with ``MLmodel``), a bundle folder, or a pipeline model folder (``models/sctab``) together with the
project's store (class Cell Ontology ids) and ontology.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# artifact downloads of small bundles need no progress bar in every log
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from sctab.annotation.annotator import Annotator
from sctab.annotation.bundle import Bundle, write_bundle
from sctab.annotation.errors import AnnotateError
from sctab.data.store import Store
from sctab.ontology.cell_ontology import load_cell_ontology
from sctab.tracking.runs import fluent_uris, tracking_uri

#: `sctab annotate`'s model when none is named and no registered model is marked as the default
DEFAULT_MODEL = "models:/sctab-ensemble@champion"
BUNDLE_ARTIFACT = "bundle"
#: the registered-model tag the register stage sets on the default model (registry.champion)
DEFAULT_TAG = "annotate_default"


def default_model_uri() -> str:
    """The model to annotate with when none is named: ``models:/<name>@champion`` of the registered model the
    register stage marked as the default (``registry.champion``: the best on validation for references, the
    scTab ensemble for the paper's profiles), else :data:`DEFAULT_MODEL`."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
        marked = sorted(rm.name for rm in client.search_registered_models()
                        if (rm.tags or {}).get(DEFAULT_TAG) == "true")
    except Exception:  # noqa: BLE001 - no registry reachable: the plain default, whose error names the problem
        return DEFAULT_MODEL
    if len(marked) == 1:
        return f"models:/{marked[0]}@champion"
    if len(marked) > 1:
        raise AnnotateError(f"several registered models are marked as the default for annotation ({', '.join(marked)}"
                            f"; tag {DEFAULT_TAG}): name one with --model")
    return DEFAULT_MODEL


def _registry_hint(uri: str) -> str:
    """Why a models:/ URI does not resolve: no such model, or which aliases/versions it does have."""
    m = re.match(r"^models:/([^/@]+)(?:@(.+)|/(.+))?$", uri)
    if not m:
        return f"{uri!r} is not of the form models:/<name>@<alias> or models:/<name>/<version>"
    name = m.group(1)
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
        rm = client.get_registered_model(name)
    except Exception:
        return f"there is no registered model {name!r} (register one with `dvc repro register`)"
    aliases = ", ".join(f"@{a} -> version {v}" for a, v in sorted((rm.aliases or {}).items())) or "none"
    if m.group(2):
        return (f"registered model {name!r} has no alias {m.group(2)!r} (its aliases: {aliases}); "
                f"`sctab promote --model {name}` sets @champion")
    return f"registered model {name!r} has no version {m.group(3)!r} (aliases: {aliases})"


def download_model(uri: str, dest: Path) -> Path:
    """Download a models:/ or runs:/ URI into ``dest``; the MLflow model folder."""
    import mlflow

    try:
        # the fluent URIs for the call only: download_artifacts resolves models:/ through the global registry
        # URI even when given its own (a `make annotate` without MLFLOW_TRACKING_URI found no alias)
        with fluent_uris():
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as e:
        if uri.startswith("models:/"):
            raise AnnotateError(f"cannot load model {uri}: {_registry_hint(uri)}") from e
        raise AnnotateError(f"cannot load model {uri}: {e}") from e


def _project_bundle(folder: Path, dest: Path, store: str | Path, ontology: str | Path) -> Path:
    try:
        lookup = Store(store).lookup("cell_type")
        onto = load_cell_ontology(ontology)
    except (FileNotFoundError, ValueError) as e:
        raise AnnotateError(f"{folder} is a pipeline model folder: annotating with it needs the project's store "
                            f"and ontology ({e}); or register it and use models:/...") from e
    class_ids = dict(zip(lookup["label"].astype(str), lookup["ontology_term_id"].astype(str)))
    return write_bundle(folder, dest, class_ids=class_ids, ontology=onto)


def load_annotator(model: str | Path | None = None, *, trust_pickle: bool = False,
                   uncertainty_threshold: float | None = None, store: str | Path = "data/store",
                   ontology: str | Path = "data/ontology/cl.obo", device: str = "auto") -> Annotator:
    """Load a model for annotation, its members on ``device`` (auto: the GPU when torch can use one);
    AnnotateError naming the problem when it cannot be used. No ``model``: :func:`default_model_uri`."""
    text = str(model) if model is not None else default_model_uri()
    with tempfile.TemporaryDirectory(prefix="sctab-model-") as tmp:
        tmp = Path(tmp)
        if text.startswith(("models:/", "runs:/")):
            path = download_model(text, tmp / "download")
        else:
            path = Path(text)
            if not path.exists():
                raise AnnotateError(f"model {text!r} is neither a models:/ or runs:/ URI nor an existing folder")
        if (path / "MLmodel").exists():
            path = path / "artifacts" / BUNDLE_ARTIFACT
        elif (path / "ensemble.json").exists() or (path / "model.yaml").exists():
            path = _project_bundle(path, tmp / "bundle", store, ontology)
        bundle = Bundle.load(path, trust_pickle=trust_pickle, device=device)
        # members are in memory now; the folder is only needed for describing where it came from
        bundle.path = Path(text)
    return Annotator(bundle=bundle, uncertainty_threshold=uncertainty_threshold,
                     description={"model": text, "kind": bundle.kind, "members": len(bundle.classifier.members),
                                  "genes": len(bundle.space.genes), "classes": bundle.space.n_classes})
