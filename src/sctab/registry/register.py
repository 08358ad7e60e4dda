"""Register model folders as MLflow registered models with their lineage; new versions become @challenger.

One registered model per model folder: ``models/sctab`` (the K-seed deep ensemble) as one pyfunc
``sctab-ensemble``, and each baseline as its own (names in ``params.yaml`` ``registry.models``). Each
version carries tags: git commit, data version (store md5 from dvc.lock), profile, test macro F1, the
test split it was scored on, the MLflow runs of its members, and the md5 of its bundle, so registering
unchanged content again returns the existing version instead of a duplicate.

Registered against a store, a version also gets its default minimum probability (the threshold below which
annotation says "Unassigned"), chosen on the store's validation split (:mod:`sctab.registry.thresholds`):
recorded in the bundle (``min_probability`` in bundle.yaml, which ``sctab annotate`` reads) and as the tag
``min_probability``.

Each version and its registered model carry the model card (:mod:`sctab.registry.model_card`) as their
descriptions, and the version's run has it as ``model_card.md``; registering unchanged content again
refreshes the card of the existing version (the reports it quotes may have changed).

A version is complete or absent: if tagging or aliasing fails after the version was created (a server
restart, say), the version is deleted again before the error is raised.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# artifact downloads of small bundles need no progress bar in every log
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from tqdm.auto import tqdm

from sctab.annotation.bundle import Bundle, update_meta, write_bundle
from sctab.annotation.resolve import DEFAULT_TAG  # true on the annotate-default model, false on the others
from sctab.data.store import Store
from sctab.ontology.cell_ontology import load_cell_ontology
from sctab.params_schema import RegistryParams, section
from sctab.registry.model_card import (
    ARTIFACT,
    ModelCardError,
    ModelReport,
    TrainingData,
    fitted_card,
    model_card,
    training_data,
)
from sctab.registry.pyfunc import BUNDLE, MODEL_CODE, signature
from sctab.registry.thresholds import DEFAULT_MAX_CELLS, DEFAULT_PRECISION, validation_threshold
from sctab.tracking import fluent_uris, lineage_tags, tracked_run, tracking_uri

EXPERIMENT = "registry"
CHALLENGER = "challenger"
CHAMPION = "champion"
DEFAULT_NAMES = RegistryParams().models  # model kind -> registered name (the schema's registry.models)
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy", "pandas", "scipy", "pyarrow", "anndata", "xgboost", "pyyaml",
                    "celltypist", "mlflow"]


#: registry.champion: which registered model `sctab annotate` uses by default
CHAMPION_RULES = ("best", "sctab")


class RegistryError(RuntimeError):
    """Registration or promotion could not be completed; nothing half-done is left behind."""


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    test_f1_macro: float | None
    reused: bool  # an identical bundle was already registered as this version

    def as_dict(self) -> dict:
        return asdict(self)


def client():
    from mlflow import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _existing_version(c, name: str, md5: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in sorted(versions, key=lambda v: -int(v.version)):
        if (v.tags or {}).get("bundle_md5") == md5:
            return v
    return None


def register_folder(folder: str | Path, name: str, *, class_ids: dict[str, str], ontology, params: dict,
                    test_f1: float | None, alias: str = CHALLENGER, fallback: dict | None = None,
                    extra_tags: dict | None = None, store: str | Path | None = None,
                    min_probability_precision: float = DEFAULT_PRECISION,
                    threshold_max_cells: int = DEFAULT_MAX_CELLS, report: ModelReport | None = None,
                    training: TrainingData | None = None, ranking: dict | None = None) -> RegisteredVersion:
    """Bundle ``folder``, log it as a pyfunc model in experiment ``registry``, register it as ``name``.

    With ``store``, the default minimum probability is chosen on its validation split for
    ``min_probability_precision`` and recorded in the bundle and as a tag. ``report`` (the evaluate stage's
    figures of this model) and ``training`` (the store's counts, else read from ``store``) feed the model
    card; without ``report`` the card quotes ``test_f1`` only."""
    import mlflow

    folder = Path(folder)
    c = client()
    with tempfile.TemporaryDirectory(prefix="sctab-bundle-") as tmp:
        bdir = write_bundle(folder, Path(tmp) / BUNDLE, class_ids=class_ids, ontology=ontology, fallback=fallback,
                            source={"folder": str(folder)})
        bundle = Bundle.load(bdir, trust_pickle=True)  # just written from our own pipeline output
        floor = None
        if store is not None:
            floor = validation_threshold(bundle.classifier, store, precision=min_probability_precision,
                                         max_cells=threshold_max_cells)
            bundle.meta = update_meta(bdir, min_probability=floor)
        md5 = bundle.md5()
        tags = lineage_tags(params, model_kind=bundle.kind, members=len(bundle.classifier.members))
        card_kw = _card_inputs(name, bundle, class_ids, params, tags, store, training, report, test_f1, floor)
        card_kw["ranking"] = ranking
        old = _existing_version(c, name, md5)
        if old is not None:
            _refresh_card(c, name, old, card_kw, extra_tags)
            f1 = old.tags.get("test_f1_macro")
            return RegisteredVersion(name, str(old.version), old.run_id or "", _float(f1), reused=True)
        tags.update({"test_f1_macro": "unknown" if test_f1 is None else f"{test_f1:.6f}",
                     "test_split": f"{tags['data_version']}:test",
                     "member_runs": ",".join(r for r in bundle.meta.get("member_runs", []) if r),
                     "bundle_md5": md5, "ontology_version": str(bundle.meta.get("ontology_version")),
                     "source_folder": str(folder)})
        if floor is not None:
            tags.update({"min_probability": f"{floor['value']:.6f}",
                         "min_probability_precision": f"{floor['precision_target']:g}",
                         "min_probability_reached": str(floor["reached"]).lower()})
        tags.update({k: str(v) for k, v in (extra_tags or {}).items()})
        with fluent_uris(), tracked_run(EXPERIMENT, name=f"register {name}", params=params, tags=tags) as run:
            run.log_params({"model_folder": str(folder), "kind": bundle.kind, "members": len(bundle.classifier.members),
                            "genes": len(bundle.space.genes), "classes": bundle.space.n_classes,
                            "uncertainty_threshold": bundle.fallback["uncertainty_threshold"],
                            **({"min_probability": floor["value"],
                                "min_probability_precision": floor["precision_target"]} if floor else {})})
            if test_f1 is not None:
                run.log_metrics({"test_f1_macro": float(test_f1)})
            run.log_text(model_card(name, run_id=run.run_id, **card_kw), ARTIFACT)
            # log_model is MLflow's fluent API: it logs into the active run, which is ours
            with mlflow.start_run(run_id=run.run_id), warnings.catch_warnings():
                # no input example on purpose: requests are raw counts by gene id
                warnings.filterwarnings("ignore", message=".*input example.*")
                info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                               artifacts={BUNDLE: str(bdir)}, signature=signature(),
                                               pip_requirements=PIP_REQUIREMENTS)
            run_id = run.run_id
    with fluent_uris():
        mv = mlflow.register_model(info.model_uri, name)
    try:
        _wait_ready(c, name, mv.version)
        for k, v in tags.items():
            c.set_model_version_tag(name, mv.version, k, v)
        c.set_model_version_tag(name, mv.version, "run_id", run_id)
        c.update_model_version(name, mv.version, description=fitted_card(name, run_id=run_id, **card_kw))
        c.update_registered_model(name, description=fitted_card(name, prefix=_newest(mv.version), run_id=run_id,
                                                                **card_kw))
        if alias:
            c.set_registered_model_alias(name, alias, mv.version)
    except Exception as e:
        cause = f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})"
        if _delete_quietly(c, name, mv.version):
            raise RegistryError(f"registering {folder} as {name} failed after version {mv.version} was created "
                                f"{cause}; that version was removed again, run the command once more") from e
        raise RegistryError(f"registering {folder} as {name} failed after version {mv.version} was created "
                            f"{cause}, and the tracking server stayed unreachable while removing it: version "
                            f"{mv.version} has no tags and no alias (promote never picks it); delete it with "
                            f"MlflowClient().delete_model_version({name!r}, {str(mv.version)!r})") from e
    return RegisteredVersion(name, str(mv.version), run_id, test_f1, reused=False)


def _wait_ready(c, name: str, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = c.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistryError(f"{name} version {version} did not become READY (status {status})")
        time.sleep(0.5)


def _delete_quietly(c, name: str, version: str, budget_s: float = 120.0) -> bool:
    """Remove a half-registered version; True once it is gone. Keeps trying through a server restart (a
    tracking server takes 10-20 s to come back), bounded by ``budget_s``."""
    deadline, wait = time.monotonic() + budget_s, 0.5
    while True:
        try:
            c.delete_model_version(name, version)
            return True
        except Exception as e:  # noqa: BLE001
            if "RESOURCE_DOES_NOT_EXIST" in str(e):
                return True
            if time.monotonic() + wait > deadline:
                return False
            time.sleep(wait)
            wait = min(wait * 2, 5.0)


def _float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _card_inputs(name: str, bundle: Bundle, class_ids: dict, params: dict, tags: dict, store, training,
                 report: ModelReport | None, test_f1: float | None, floor: dict | None) -> dict:
    """The model card's inputs, checked by building it once: a missing one stops before anything is logged."""
    if training is None and store is not None:
        training = training_data(store, tags["data_version"])
    if report is None:
        report = ModelReport(metrics=None if test_f1 is None else {"test_f1_macro": float(test_f1)})
    kw = {"kind": bundle.kind, "members": len(bundle.classifier.members), "classes": list(bundle.space.classes),
          "class_ids": class_ids, "genes": bundle.space.var, "params": params, "data": training, "report": report,
          "min_probability": floor, "git_commit": tags["git_commit"]}
    try:
        model_card(name, **kw)
    except ModelCardError as e:
        raise RegistryError(f"nothing registered for {name}: {e}") from e
    return kw


def _newest(version) -> str:
    return f"*The card of version {version}, the newest registered.*\n\n"


def _refresh_card(c, name: str, old, card_kw: dict, extra_tags: dict | None = None) -> None:
    """An unchanged bundle keeps its version; its card (and the model's, if it is the newest) and the tags that
    depend on the other models (its validation rank) are brought up to date with today's reports."""
    run_id = old.run_id or (old.tags or {}).get("run_id")
    desc = fitted_card(name, run_id=run_id, **card_kw)
    try:
        for k, v in (extra_tags or {}).items():
            if (old.tags or {}).get(k) != str(v):
                c.set_model_version_tag(name, old.version, k, str(v))
        if (old.description or "") != desc:
            c.update_model_version(name, old.version, description=desc)
            if run_id:
                c.log_text(run_id, model_card(name, run_id=run_id, **card_kw), ARTIFACT)
        newest = max(int(v.version) for v in c.search_model_versions(f"name = '{name}'"))
        if newest == int(old.version):
            c.update_registered_model(name, description=fitted_card(name, prefix=_newest(old.version),
                                                                    run_id=run_id, **card_kw))
    except Exception as e:
        raise RegistryError(f"{name} version {old.version} is unchanged, but updating its model card failed "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); run the "
                            f"command once more") from e


def folder_val_f1(folder: str | Path) -> float | None:
    """A model folder's validation macro F1, as its train stage wrote it (the ensemble's for models/sctab); None
    when the folder records none (an imported checkpoint): it ranks last."""
    import json

    folder = Path(folder)
    for name, path in (("ensemble.json", ("ensemble", "val_f1_macro")), ("metrics.json", ("val_f1_macro",))):
        if (folder / name).is_file():
            node = json.loads((folder / name).read_text())
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            try:
                return None if node is None else float(node)
            except (TypeError, ValueError) as e:
                raise RegistryError(f"{folder / name}: val_f1_macro {node!r} is not a number") from e
    return None


def rank_models(models_dir: str | Path, names: dict[str, str], metrics: dict, rule: str = "sctab") -> dict:
    """The pipeline's models by validation macro F1 (best first) and the one `sctab annotate` uses by default:
    the best on validation (``rule`` best) or the scTab ensemble (``rule`` sctab, the paper's profiles; the best
    when there is no scTab folder). Validation, not test: the test split stays a held-out report."""
    if rule not in CHAMPION_RULES:
        raise RegistryError(f"registry.champion must be one of {', '.join(CHAMPION_RULES)}, got {rule!r}")
    rows = []
    for folder_name, name in names.items():
        folder = Path(models_dir) / folder_name
        if folder.is_dir():
            rows.append({"model": folder_name, "name": name, "val_f1_macro": folder_val_f1(folder),
                         "test_f1_macro": (metrics.get(folder_name) or {}).get("test_f1_macro")})
    rows.sort(key=lambda r: (r["val_f1_macro"] is None, -(r["val_f1_macro"] or 0.0)))  # unscored last
    if not rows:
        return {"rule": rule, "models": [], "default": None, "best": None}
    best = rows[0]["name"]
    default = names.get("sctab") if rule == "sctab" and any(r["model"] == "sctab" for r in rows) else best
    return {"rule": rule, "models": rows, "default": default, "best": best}


def mark_default(c, ranking: dict) -> None:
    """Tag the default model ``annotate_default=true`` and the others registered with it ``false``."""
    for r in ranking["models"]:
        c.set_registered_model_tag(r["name"], DEFAULT_TAG, str(r["name"] == ranking["default"]).lower())


def store_class_ids(store: str | Path) -> dict[str, str]:
    lookup = Store(store).lookup("cell_type")
    return dict(zip(lookup["label"].astype(str), lookup["ontology_term_id"].astype(str)))


def register_pipeline_models(models_dir: str | Path, *, store: str | Path, ontology_path: str | Path,
                             metrics: dict, params: dict, per_class_f1: dict | None = None,
                             reports_from: dict | None = None, ranking_out: dict | None = None
                             ) -> list[RegisteredVersion]:
    """The register stage: every model folder named in ``registry.models`` that exists under ``models_dir``.

    ``metrics`` (metrics.json's models) and ``per_class_f1`` (:func:`sctab.registry.model_card.read_per_class_f1`)
    feed each model card; ``reports_from`` names their files for the card. The store's figures for the cards
    are read before any model is registered, so a bad store stops the stage with nothing registered. The models
    are ranked by validation macro F1 (:func:`rank_models`); the cards show the ranking, each version is tagged
    with its validation F1 and rank, and the default model for `sctab annotate` (``registry.champion``) gets the
    registered-model tag ``annotate_default=true``; ``ranking_out`` (a dict) receives the ranking."""
    reg = section(params, "registry")
    names = {**DEFAULT_NAMES, **reg.models}
    fallback = {"uncertainty_threshold": reg.uncertainty_threshold, "coverage": reg.coverage,
                "max_labels": reg.max_labels}
    floor = {"min_probability_precision": reg.min_probability_precision,
             "threshold_max_cells": reg.threshold_max_cells}
    if not section(params, "profile"):
        raise RegistryError("nothing registered: the params name no profile (the model cards need it)")
    class_ids = store_class_ids(store)
    onto = load_cell_ontology(ontology_path)
    try:
        training = training_data(store, lineage_tags(params)["data_version"])
    except ModelCardError as e:
        raise RegistryError(f"nothing registered: {e}") from e
    per_class_f1 = per_class_f1 or {}
    ranking = rank_models(models_dir, names, metrics, reg.champion)
    ranks = {r["name"]: i for i, r in enumerate(ranking["models"], 1)}
    out = []
    for folder_name, name in tqdm(names.items(), desc="register", unit="model", disable=None):
        folder = Path(models_dir) / folder_name
        if not folder.is_dir():
            continue
        f1 = (metrics.get(folder_name) or {}).get("test_f1_macro")
        report = ModelReport(metrics=metrics.get(folder_name), per_class_f1=per_class_f1.get(folder_name),
                             sources=dict(reports_from or {}))
        row = ranking["models"][ranks[name] - 1]
        val = "unknown" if row["val_f1_macro"] is None else f"{row['val_f1_macro']:.6f}"
        out.append(register_folder(folder, name, class_ids=class_ids, ontology=onto, params=params,
                                   test_f1=None if f1 is None else float(f1), alias=reg.alias,
                                   fallback=fallback, store=store, report=report, training=training, ranking=ranking,
                                   extra_tags={"val_f1_macro": val,
                                               "val_rank": f"{ranks[name]} of {len(ranking['models'])}"},
                                   **floor))
    if not out:
        raise RegistryError(f"no model folder of {sorted(names)} under {models_dir}")
    try:
        mark_default(client(), ranking)
    except Exception as e:  # noqa: BLE001 - the versions are complete; only the default's marker is missing
        raise RegistryError(f"every model was registered, but marking {ranking['default']} as the default for "
                            f"`sctab annotate` failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                            f"run the stage once more") from e
    if ranking_out is not None:
        ranking_out.update(ranking)
    return out
