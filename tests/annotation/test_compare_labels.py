"""`sctab annotate --compare-labels COLUMN`: a file's own labels against the predictions through the Cell Ontology.

Three layers: the ontology relations on hand-picked CL terms (no model); the real scRT cells (the pyPLNmodels
1.0.10 wheel, as tests/census/test_scrt_reference.py uses them) annotated by a model fitted on them and
relabelled with a coarser and a finer vocabulary, where the agreement of every cell follows from its prediction;
and bad input, which must be a clear error with nothing written.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from sctab.annotation import AnnotateError, annotate, annotate_file, load_annotator, write_bundle
from sctab.annotation.compare import (
    COARSER,
    DISAGREE,
    EXACT,
    FINER,
    NOT_IN_MODEL,
    NOT_MAPPED,
    SIBLING,
    UNASSIGNED,
    agreement,
    compare,
    compare_paths,
    corrected_f1,
    map_user_labels,
    relation_to_model,
)
from sctab.cli import main as cli
from tests.paths import REPO_ROOT as REPO

CACHE = Path(os.environ.get("SCTAB_TEST_CACHE", REPO / "benchmarks" / ".cache" / "real-data"))

CD4, CD8, MAC = "CL:0000624", "CL:0000625", "CL:0000235"  # CD4/CD8-positive alpha-beta T cell, macrophage
T_CELL, AB_T, MYELOID = "CL:0000084", "CL:0000789", "CL:0000766"  # T cell, alpha-beta T cell, myeloid leukocyte
CD4_MEM, CD8_MEM, ALV_MAC = "CL:0000897", "CL:0000909", "CL:0000583"  # memory CD4 / CD8, alveolar macrophage
B_CELL, NEURON = "CL:0000236", "CL:0000540"
CLASSES = [CD4, CD8, MAC]


# ------------------------------------------------------------------------------------- hand-built relations
@pytest.mark.parametrize("user, predicted, relation, expected", [
    (CD4, CD4, "a class", EXACT),
    (T_CELL, CD8, "above 2 classes", FINER),        # user wrote T cell, the model says which one
    (AB_T, CD4, "above 2 classes", FINER),
    (CD4_MEM, CD4, "below a class", COARSER),        # user's memory subtype, the model only knows CD4
    (CD4, CD8, "a class", SIBLING),                  # both below mature alpha-beta T cell
    (CD4_MEM, CD8, "below a class", DISAGREE),       # CD8 is no parent-mate of the memory CD4 subtype
    (MYELOID, CD4, "above 1 class", DISAGREE),
    (NEURON, CD4, "absent", NOT_IN_MODEL),
    (None, CD4, "not mapped", NOT_MAPPED),
    (T_CELL, "", "above 2 classes", UNASSIGNED),
])
def test_agreement_on_hand_built_cases(ontology, user, predicted, relation, expected):
    rel, _ = relation_to_model(user, CLASSES, ontology)
    assert rel == relation
    assert agreement(user, predicted, rel, ontology) == expected


def test_relation_of_a_type_above_several_classes(ontology):
    rel, below = relation_to_model(T_CELL, CLASSES + [B_CELL], ontology)
    assert rel == "above 2 classes" and sorted(below) == [CD4, CD8]
    rel, below = relation_to_model("CL:0000738", CLASSES + [B_CELL], ontology)  # leukocyte: above all four
    assert rel == "above 4 classes" and sorted(below) == sorted(CLASSES + [B_CELL])
    assert relation_to_model(CD8_MEM, CLASSES, ontology) == ("below a class", [CD8])
    assert relation_to_model(NEURON, CLASSES, ontology) == ("absent", [])


def test_free_text_ids_synonyms_and_label_map(ontology):
    user = map_user_labels(["T cell", "CL:0000235", "Macrophages", "nonsense", None, "unknown", "CL:0000003"],
                           ontology, {"Macrophages": MAC})
    assert user.mapping == {"T cell": T_CELL, "CL:0000235": MAC, "Macrophages": MAC, "nonsense": None, "": None,
                            "unknown": None, "CL:0000003": "CL:0000000"}  # obsolete native cell -> its replacement
    # exact synonyms map like labels, case-insensitively (the h5ad reference source's rule)
    assert map_user_labels(["T lymphocyte", "histiocyte", "CD4-positive, alpha-beta T-cell"], ontology).mapping == {
        "T lymphocyte": T_CELL, "histiocyte": MAC, "CD4-positive, alpha-beta T-cell": CD4}
    with pytest.raises(AnnotateError, match=r"none of the 2 label\(s\) in obs column 'who'.*--label-map"):
        map_user_labels(["T_cells_CD4+", "Macrophages"], ontology, column="who")


def test_corrected_f1_is_the_papers_rule(ontology):
    # truth "T cell" (coarse): CD4 and CD8 predictions count as right, macrophage not
    truth = [T_CELL, T_CELL, T_CELL, MAC, MAC, CD4]
    pred = [CD4, CD8, MAC, MAC, "", T_CELL]  # a coarser prediction of a CD4 truth is wrong (and a false T cell)
    macro, per, labels = corrected_f1(truth, pred, ontology)
    y_true = ["T", "T", "T", "M", "M", "CD4"]
    y_pred = ["T", "T", "M", "M", "none", "T"]
    ref = f1_score(y_true, y_pred, labels=["CD4", "M", "T"], average=None)
    assert per[T_CELL] == pytest.approx(ref[2]) and per[MAC] == pytest.approx(ref[1]) and per[CD4] == 0
    assert sorted(labels) == sorted([T_CELL, MAC, CD4])  # the user's types; 'unassigned' is no class
    assert macro == pytest.approx(np.mean([ref[0], ref[1], ref[2]]))
    # a coarse vocabulary: a macrophage call is read as the user's "myeloid leukocyte", a false positive of it,
    # and the model's own classes (macrophage, CD8) are no labels of the average
    macro, per, labels = corrected_f1([T_CELL, T_CELL, MYELOID, MYELOID], [CD8, MAC, MAC, CD4], ontology)
    ref = f1_score(["T", "T", "M", "M"], ["T", "M", "M", "T"], labels=["M", "T"], average=None)
    assert labels == sorted([T_CELL, MYELOID]) and per[MYELOID] == pytest.approx(ref[0])
    assert macro == pytest.approx(ref.mean())


def test_table_rows_and_shares(ontology):
    user = map_user_labels(["T cell"] * 4 + ["neuron", "gibberish"], ontology)
    pred_ids = [CD4, CD8, MAC, "", CD4, CD8]
    labels = [ontology.label(p) if p else "Unassigned" for p in pred_ids]
    res = compare(user, pred_ids, labels, CLASSES, ontology)
    assert list(res.agreement) == [FINER, FINER, DISAGREE, UNASSIGNED, NOT_IN_MODEL, NOT_MAPPED]
    row = res.table.set_index("label").loc["T cell"]
    assert row.cells == 4 and row.cl_id == T_CELL and row.relation == "above 2 classes"
    assert row.agreement[FINER] == 0.5 and row.agreement[DISAGREE] == 0.25 and row.agreement[UNASSIGNED] == 0.25
    assert row.f1 == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # tp 2, fn 2 (macrophage, unassigned)
    assert pd.isna(res.table.set_index("label").loc["neuron"].f1)
    md = res.to_markdown()
    assert "| T cell | 4 | CL:0000084 | above 2 classes | model finer 50%" in md
    assert json.loads(res.to_json())["labels"][0]["label"] == "T cell"


# ----------------------------------------------------------------------------------------- the real scRT cells
def _scrt_h5ad(path: Path) -> Path:
    from sctab.census.scrt import fetch_wheel, read_scrt

    spec = importlib.util.spec_from_file_location("scrt_reference", REPO / "pipelines" / "scrt_reference.py")
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    counts, labels = read_scrt(fetch_wheel(CACHE))
    return conv.write_h5ad(counts, labels, path)


def _centroid_model(adata: anndata.AnnData, class_of: dict[str, str], ontology, root: Path) -> Path:
    """A linear model fitted on the scRT cells: nearest centroid of the normalised log1p values (W = centroid,
    b = -|centroid|^2 / 2), saved as a pipeline model folder and bundled like a registered model."""
    import torch

    from sctab import models
    from sctab.census.genes import gencode_genes
    from sctab.data.normalize import normalize_log1p
    from sctab.models import FeatureSpace, TorchClassifier, build_model

    table = gencode_genes().drop_duplicates("feature_name").set_index("feature_name")["feature_id"]
    keep = [g for g in adata.var_names if g in table.index]
    ids = table.loc[keep]
    keep = [g for g, i in zip(keep, ~pd.Index(ids.to_numpy()).duplicated()) if i]
    x = normalize_log1p(adata[:, keep].X, 10_000.0)
    classes = sorted(set(class_of.values()), key=list(class_of.values()).index)
    y = adata.obs["cell_type"].map(class_of).to_numpy()
    centroids = np.stack([x[y == c].mean(axis=0) for c in classes])
    module = build_model("linear", len(keep), len(classes))
    with torch.no_grad():
        module.linear.weight.copy_(torch.as_tensor(centroids))
        module.linear.bias.copy_(torch.as_tensor(-0.5 * (centroids ** 2).sum(axis=1)))
    labels = [ontology.label(c) for c in classes]
    space = FeatureSpace(var=pd.DataFrame({"feature_id": table.loc[keep].to_numpy(), "feature_name": keep}),
                         classes=labels)
    folder = models.save(root / "linear", TorchClassifier(kind="linear", module=module, space=space),
                         target_sum=10_000.0, meta={"run_id": "centroids", "seed": 0}, history=[])
    return write_bundle(folder, root / "bundle", class_ids=dict(zip(labels, classes)), ontology=ontology)


SCRT_MAP = {"T_cells_CD4+": CD4, "T_cells_CD8+": CD8, "Macrophages": MAC}
COARSE = {"T_cells_CD4+": "T cell", "T_cells_CD8+": "T cell", "Macrophages": "myeloid leukocyte"}
FINE = {"T_cells_CD4+": "CD4-positive, alpha-beta memory T cell",
        "T_cells_CD8+": "CD8-positive, alpha-beta memory T cell", "Macrophages": "alveolar macrophage"}


@pytest.fixture(scope="module")
def scrt(tmp_path_factory, ontology):
    root = tmp_path_factory.mktemp("scrt-compare")
    path = _scrt_h5ad(root / "scrt.h5ad")
    adata = anndata.read_h5ad(path)
    bundle = _centroid_model(adata, SCRT_MAP, ontology, root / "model")
    adata.obs["coarse"] = adata.obs["cell_type"].map(COARSE).astype(str)
    adata.obs["fine"] = adata.obs["cell_type"].map(FINE).astype(str)
    adata.obs["cl"] = adata.obs["cell_type"].map(SCRT_MAP).astype(str)
    adata.write_h5ad(path)
    (root / "scrt_map.yaml").write_text((REPO / "conf" / "label_maps" / "scrt.yaml").read_text())
    return path, bundle, root


def test_scrt_relabelled_coarser_and_finer(scrt, obo_file, tmp_path, capsys):
    path, bundle, root = scrt
    ann = load_annotator(bundle)
    out = tmp_path / "scrt.annotated.h5ad"
    # the original free-text labels through the project's label map (conf/label_maps/scrt.yaml)
    assert cli(["annotate", str(path), "-o", str(out), "--model", str(bundle), "--ontology", str(obo_file),
                "--compare-labels", "cell_type", "--label-map", str(root / "scrt_map.yaml"),
                "--min-probability", "0", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| T_cells_CD4+ |" in printed and "Ontology-corrected macro F1" in printed
    written = anndata.read_h5ad(out)
    got = written.obs
    table = written.uns["sctab_compare"]["table"].set_index("label")
    assert table.loc["T_cells_CD4+", "cl_id"] == CD4 and table["cells"].sum() == 2000
    truth = got["cell_type"].map(SCRT_MAP).to_numpy()
    pred = got["sctab_cell_type_ontology_term_id"].to_numpy()
    assert (truth == pred).mean() > 0.8  # the centroid model fits its own cells
    expected = np.where(truth == pred, EXACT, np.where((truth != MAC) & (pred != MAC), SIBLING, DISAGREE))
    assert (got["sctab_agreement"].to_numpy() == expected).all()
    js, md = compare_paths(out)
    doc = json.loads(js.read_text())
    assert doc["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert md.read_text().startswith("# Labels of obs column `cell_type`")

    for column in ("coarse", "fine", "cl"):
        annotate_file(path, tmp_path / f"{column}.csv", ann, compare_labels=column, ontology=obo_file,
                      min_probability=0, progress=False)
    by = {c: pd.read_csv(tmp_path / f"{c}.csv", index_col=0)["sctab_agreement"].to_numpy()
          for c in ("coarse", "fine", "cl")}
    t_cell = truth != MAC
    pred_t = pred != MAC
    # coarser vocabulary: a T-cell prediction of a "T cell" and a macrophage one of a "myeloid leukocyte" are finer
    assert (by["coarse"] == np.where(t_cell == pred_t, FINER, DISAGREE)).all()
    # finer vocabulary: the model's class above the user's subtype is coarser; the memory siblings disagree
    assert (by["fine"] == np.where(truth == pred, COARSER, DISAGREE)).all()
    assert (by["cl"] == expected).all()  # CL ids as labels need no map
    coarse = json.loads(compare_paths(tmp_path / "coarse.csv")[0].read_text())
    rows = {r["label"]: r for r in coarse["labels"]}
    assert rows["T cell"]["relation"] == "above 2 classes" and rows["myeloid leukocyte"]["relation"] == "above 1 class"
    assert rows["T cell"]["agreement"][FINER] == pytest.approx((pred_t[t_cell]).mean(), abs=1e-4)
    # coarse truths are recovered by any finer prediction: F1 of T cell vs not, from the binary calls
    assert coarse["f1_macro"] == pytest.approx(f1_score(t_cell, pred_t, average="macro"))
    fine = json.loads(compare_paths(tmp_path / "fine.csv")[0].read_text())
    assert {r["relation"] for r in fine["labels"]} == {"below a class"} and fine["f1_macro"] is None
    assert "| below a class: CD4-positive, alpha-beta T cell |" in compare_paths(tmp_path / "fine.csv")[1].read_text()


def test_api_adds_agreement_and_uns(scrt, obo_file):
    path, bundle, _ = scrt
    adata = anndata.read_h5ad(path)[:300].copy()
    adata.obs["coarse"] = adata.obs["coarse"].astype(str)
    adata.obs.loc[adata.obs_names[:5], "coarse"] = "neuron"
    adata.obs.loc[adata.obs_names[5:7], "coarse"] = "no such type"
    out = annotate(adata, bundle, compare_labels="coarse", ontology=obo_file, progress=False, copy=True)
    agree = out.obs["sctab_agreement"]
    assert (agree[:5] == NOT_IN_MODEL).all() and (agree[5:7] == NOT_MAPPED).all()
    assert set(agree[7:]) <= {FINER, DISAGREE}
    rows = out.uns["sctab_compare"]["table"].set_index("label").to_dict(orient="index")
    assert rows["neuron"]["relation"] == "absent" and rows["no such type"]["relation"] == "not mapped"
    assert "sctab_agreement" not in adata.obs


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["missing-column", "unmappable", "bad-map"])
def test_bad_compare_input_is_a_clear_error_and_writes_nothing(case, scrt, obo_file, tmp_path, capsys):
    path, bundle, _ = scrt
    adata = anndata.read_h5ad(path)[:50].copy()
    src = tmp_path / "in.h5ad"
    column, extra = "coarse", []
    if case == "missing-column":
        column = "celltype"
    elif case == "unmappable":
        column = "cell_type"  # T_cells_CD4+ ... without the label map
    else:
        (tmp_path / "map.yaml").write_text("T_cells_CD4+: CD4 T\n")
        column, extra = "cell_type", ["--label-map", str(tmp_path / "map.yaml")]
    adata.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    rc = cli(["annotate", str(src), "-o", str(out), "--model", str(bundle), "--ontology", str(obo_file),
              "--compare-labels", column, "-q", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("sctab: error:") and "Traceback" not in err
    expect = {"missing-column": "obs column 'celltype' is not in", "unmappable": "none of the 3 label(s) in obs column "
              "'cell_type'", "bad-map": "--label-map"}[case]
    assert expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.h5ad"] + (["map.yaml"] if extra else []))


def test_without_an_ontology_file_the_models_release_is_used(scrt, obo_file, tmp_path):
    """No OBO at --ontology: the release the bundle names (bundle.yaml ontology_version), written from
    cellxgene-ontology-guide, gives the same comparison."""
    path, bundle, _ = scrt
    adata = anndata.read_h5ad(path)[:200].copy()
    a = annotate(adata, bundle, compare_labels="coarse", ontology=obo_file, progress=False, copy=True)
    b = annotate(adata, bundle, compare_labels="coarse", ontology=tmp_path / "absent.obo", progress=False, copy=True)
    assert (a.obs["sctab_agreement"] == b.obs["sctab_agreement"]).all()
    assert a.uns["sctab_compare"]["f1_macro"] == b.uns["sctab_compare"]["f1_macro"]


def test_help_explains_the_option(capsys):
    with pytest.raises(SystemExit):
        cli(["annotate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--compare-labels COLUMN", "<key>_agreement", "model finer", "not in the model",
                  "<OUT stem>.compare.json", "--label-map YAML", "corrected F1"):
        assert words in text, words
