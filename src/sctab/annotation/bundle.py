"""The annotation bundle: everything needed to label cells, with no store and no pipeline around it.

A registered model, a served model and ``sctab annotate`` all read the same folder:

    bundle.yaml          kind, members, normalisation, fallback settings, where it came from, and (once
                         registered against a store) the default ``min_probability`` and how it was chosen
    var.parquet          the model's genes in input order (feature_id, feature_name)
    classes.parquet      the model's classes in output order (label, ontology_term_id)
    ontology.json        the Cell Ontology slice the coarse fallback label needs (ancestors of every class)
    members/<name>/      the pipeline's model folders, unchanged (model.pt, model.ubj + pca.npz, model.pkl)

``write_bundle`` builds it from a pipeline model folder (``models/sctab`` ensemble or a single model) and
``Bundle.load`` rebuilds the predictor. Neural weights load with ``weights_only=True``, XGBoost from UBJ;
only a CellTypist member is a pickle (CellTypist's own format).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from sctab import models
from sctab.annotation.errors import AnnotateError
from sctab.models import Classifier, Ensemble, FeatureSpace
from sctab.params_schema import RegistryParams
from sctab.security import UntrustedPickleError

FORMAT = 1
# the schema's registry defaults (a bundle written without them gets these)
DEFAULT_FALLBACK = {k: getattr(RegistryParams, k) for k in ("uncertainty_threshold", "coverage", "max_labels")}


@dataclass
class OntologySlice:
    """Ancestors (with their labels and depth) of every class: enough for lowest common ancestors."""

    labels: dict[str, str]
    depth: dict[str, int]
    ancestors: dict[str, frozenset[str]]

    def lowest_common_ancestor(self, term_ids: list[str]) -> str:
        common = set(self.ancestors[term_ids[0]]) | {term_ids[0]}
        for t in term_ids[1:]:
            common &= set(self.ancestors[t]) | {t}
        if not common:
            return "CL:0000000"  # 'cell': the root every class shares
        return min(common, key=lambda a: (-self.depth.get(a, 0), a))

    def to_json(self) -> dict:
        return {"labels": self.labels, "depth": self.depth,
                "ancestors": {k: sorted(v) for k, v in self.ancestors.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> OntologySlice:
        return cls(labels=dict(doc["labels"]), depth={k: int(v) for k, v in doc["depth"].items()},
                   ancestors={k: frozenset(v) for k, v in doc["ancestors"].items()})

    @classmethod
    def from_ontology(cls, ontology, class_ids: list[str]) -> OntologySlice:
        terms: set[str] = set()
        ancestors = {}
        for t in class_ids:
            anc = frozenset(ontology.ancestors(t))
            ancestors[t] = anc
            terms |= anc | {t}
        labels = {t: ontology.label(t) for t in sorted(terms)}
        depth = {t: ontology.n_ancestors(t) for t in sorted(terms)}
        return cls(labels=labels, depth=depth, ancestors=ancestors)


def _member_folders(folder: Path) -> list[Path]:
    try:
        return models.member_folders(folder)
    except models.ModelFolderError as e:
        raise AnnotateError(str(e)) from None


def _kind_of(member: Path) -> str:
    if not (member / "model.yaml").exists():
        raise AnnotateError(f"{member} is not a model folder (no model.yaml)")
    kind = str(models.read_meta(member).get("model", "")).lower()
    if kind not in models.KINDS:
        raise AnnotateError(f"{member}/model.yaml names an unknown model {kind!r}")
    return kind


def _dir_md5(folder: Path) -> str:
    h = hashlib.md5()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def write_bundle(model_folder: str | Path, out: str | Path, *, class_ids: dict[str, str], ontology,
                 fallback: dict | None = None, source: dict | None = None) -> Path:
    """Copy a pipeline model folder into a bundle at ``out``.

    ``class_ids`` maps each class label to its Cell Ontology id (the store's cell_type lookup);
    ``ontology`` is a :class:`sctab.ontology.CellOntology` (only the classes' ancestors are kept).
    """
    model_folder, out = Path(model_folder), Path(out)
    if not model_folder.is_dir():
        raise AnnotateError(f"model folder {model_folder} does not exist")
    members = _member_folders(model_folder)
    kinds = {_kind_of(m) for m in members}
    if len(kinds) != 1:
        raise AnnotateError(f"{model_folder}: members of different kinds {sorted(kinds)}")
    kind = kinds.pop()
    var = pd.read_parquet(members[0] / "var.parquet")[["feature_id", "feature_name"]]
    labels = pd.read_parquet(members[0] / "cell_type.parquet")["label"].astype(str).tolist()
    for m in members[1:]:
        if pd.read_parquet(m / "var.parquet")["feature_id"].tolist() != var["feature_id"].tolist():
            raise AnnotateError(f"ensemble member {m} has other genes than {members[0]}")
        if pd.read_parquet(m / "cell_type.parquet")["label"].astype(str).tolist() != labels:
            raise AnnotateError(f"ensemble member {m} has other classes than {members[0]}")
    missing = [lab for lab in labels if lab not in class_ids]
    if missing:
        raise AnnotateError(f"no Cell Ontology id for class(es) {missing[:5]} of {model_folder}")
    ids = [class_ids[lab] for lab in labels]
    meta = models.read_meta(members[0])
    norm = meta.get("normalisation") or {"target_sum": 10000.0, "log1p": True}
    out.mkdir(parents=True, exist_ok=True)
    for m in members:
        dest = out / "members" / m.name
        shutil.copytree(m, dest, ignore=shutil.ignore_patterns("history.csv", "__pycache__"))
    var.to_parquet(out / "var.parquet", index=False)
    pd.DataFrame({"label": labels, "ontology_term_id": ids}).to_parquet(out / "classes.parquet", index=False)
    (out / "ontology.json").write_text(json.dumps(OntologySlice.from_ontology(ontology, ids).to_json()))
    doc = {"format": FORMAT, "kind": f"{kind}-ensemble" if len(members) > 1 or (model_folder / "ensemble.json").exists()
           else kind, "member_kind": kind, "members": [m.name for m in members],
           "member_runs": [str(models.read_meta(m).get("run_id", "")) for m in members],
           "n_genes": len(var), "n_classes": len(labels),
           "normalisation": {"target_sum": float(norm.get("target_sum", 10000.0)),
                             "log1p": bool(norm.get("log1p", True))},
           "fallback": {**DEFAULT_FALLBACK, **(fallback or {})},
           "ontology_version": getattr(ontology, "version", None), "source": source or {"folder": str(model_folder)}}
    (out / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def update_meta(path: str | Path, **fields) -> dict:
    """Add or replace top-level fields of a bundle's bundle.yaml (e.g. the default ``min_probability``
    recorded at registration); the new document."""
    target = Path(path) / "bundle.yaml"
    doc = yaml.safe_load(target.read_text()) or {}
    doc.update(fields)
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


@dataclass
class Bundle:
    """A loaded bundle: its classifier (an :class:`~sctab.models.Ensemble` for several members), the classes'
    Cell Ontology ids and the ontology slice of the coarse fallback label."""

    path: Path
    meta: dict
    classifier: Classifier
    class_ids: list[str]
    ontology: OntologySlice

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def space(self) -> FeatureSpace:
        return self.classifier.space

    @property
    def target_sum(self) -> float:
        return float(self.meta["normalisation"]["target_sum"])

    @property
    def fallback(self) -> dict:
        return {**DEFAULT_FALLBACK, **(self.meta.get("fallback") or {})}

    @classmethod
    def load(cls, path: str | Path, *, trust_pickle: bool = False, device: str = "cpu") -> Bundle:
        path = Path(path)
        if not (path / "bundle.yaml").is_file():
            raise AnnotateError(f"{path} is not an annotation bundle (no bundle.yaml)")
        meta = yaml.safe_load((path / "bundle.yaml").read_text()) or {}
        if meta.get("format") != FORMAT:
            raise AnnotateError(f"{path}: bundle format {meta.get('format')!r} is not the supported {FORMAT}")
        var = pd.read_parquet(path / "var.parquet")
        classes = pd.read_parquet(path / "classes.parquet")
        space = FeatureSpace(var=var[["feature_id", "feature_name"]], classes=classes["label"].astype(str).tolist())
        onto = OntologySlice.from_json(json.loads((path / "ontology.json").read_text()))
        if meta["member_kind"] == "celltypist" and not trust_pickle:
            raise AnnotateError(
                f"{path} holds a CellTypist model, which is a pickle: loading it can run code. Load it only "
                f"if you trust where it came from: pass trust_pickle=True (CLI: --trust-pickle)")
        members = []
        for name in meta["members"]:
            folder = path / "members" / name
            try:
                member = models.load(folder, device=device, trust_pickle=trust_pickle)
            except UntrustedPickleError:
                raise
            except models.ModelFolderError as e:
                raise AnnotateError(str(e)) from e
            try:
                member.space.check_same(space, f"bundle member {folder}")
            except models.ClassifierError as e:
                raise AnnotateError(str(e)) from e
            members.append(member)
        clf = Ensemble(members_=members, names=list(meta["members"])) if len(members) > 1 else members[0]
        return cls(path=path, meta=meta, classifier=clf,
                   class_ids=classes["ontology_term_id"].astype(str).tolist(), ontology=onto)

    def md5(self) -> str:
        return _dir_md5(self.path)
