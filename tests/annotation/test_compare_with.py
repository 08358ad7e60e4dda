"""`sctab annotate --compare-with MODEL` and `sctab promote NAME --check FILE.h5ad`: how labels change between two
models on the same cells, read in the Cell Ontology.

The models are hand-built linear models over real Ensembl ids whose weights send each marker gene to one class,
so every cell's label under each model, and so the change between them, is known in advance: real Cell Ontology
terms give finer, coarser, sibling and other pairs; a gene only one model reads gives a cell that only the other
model leaves Unassigned. Registration and promotion go through a real MLflow store (sqlite), as
registry/test_registry.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from sctab.annotation import annotate, annotate_file, write_bundle
from sctab.annotation.changes import (
    CHANGES,
    COARSER,
    FINER,
    OTHER,
    SAME,
    SIBLING,
    changes_paths,
    classify_change,
    compare_models,
)
from sctab.cli import main as cli

CD4, CD8, MAC = "CL:0000624", "CL:0000625", "CL:0000235"   # CD4/CD8-positive alpha-beta T cell, macrophage
T_CELL, B_CELL, ALV_MAC = "CL:0000084", "CL:0000236", "CL:0000583"  # T cell, B cell, alveolar macrophage
CD4_MEM, MYELOID = "CL:0000897", "CL:0000766"  # CD4-positive alpha-beta memory T cell, myeloid leukocyte


@pytest.mark.parametrize("previous, new, expected", [
    (CD4, CD4, SAME),
    (T_CELL, CD4, FINER),        # the new model says which T cell
    (MAC, ALV_MAC, FINER),
    (MYELOID, MAC, FINER),
    (CD4, T_CELL, COARSER),      # the new model only knows T cells
    (CD4_MEM, CD4, COARSER),
    (CD4, CD8, SIBLING),         # both directly below mature alpha-beta T cell
    (B_CELL, CD4, OTHER),
    (CD4_MEM, CD8, OTHER),       # CD8 is no parent-mate of the memory CD4 subtype
    (MAC, CD4, OTHER),
    ("", CD4, OTHER),            # unassigned before, labelled now
    (CD4, "", OTHER),
    ("", "", SAME),              # unassigned by both
])
def test_change_of_hand_built_cl_pairs(ontology, previous, new, expected):
    assert classify_change(previous, new, ontology) == expected


def test_summary_by_label_pair_adds_up(ontology):
    ids = [T_CELL, T_CELL, CD4, CD4, CD4, "", MAC]
    new_ids = [CD4, CD4, CD8, CD4, CD4, CD4, MAC]
    frame = lambda xs: pd.DataFrame({"label": [ontology.label(x) if x else "Unassigned" for x in xs],  # noqa: E731
                                     "cell_type_ontology_term_id": xs})
    ch = compare_models(frame(ids), frame(new_ids), ontology, previous_model="old", new_model="new")
    assert list(ch.change) == [FINER, FINER, SIBLING, SAME, SAME, OTHER, SAME]
    assert ch.totals == {SAME: 3, FINER: 2, COARSER: 0, SIBLING: 1, OTHER: 1} and sum(ch.totals.values()) == 7
    assert list(ch.table["cells"]) == [2, 2, 1, 1, 1] and ch.table["cells"].sum() == 7
    first = ch.table.iloc[:2].set_index("previous_label")["change"].to_dict()  # ties sorted by label
    assert first == {"CD4-positive, alpha-beta T cell": SAME, "T cell": FINER}
    md = ch.to_markdown()
    assert "| T cell | CD4-positive, alpha-beta T cell | finer | 2 | 29% |" in md
    assert "All 7 cells: same 3 (43%), finer 2 (29%), coarser 0 (0%), sibling 1 (14%), other 1 (14%)." in md
    short = ch.to_markdown(max_rows=2)
    assert "| ... 3 more pairs | | | 3 | 43% |" in short and "All 7 cells" in short
    doc = json.loads(ch.to_json())
    assert sum(r["cells"] for r in doc["pairs"]) == doc["n_cells"] == 7


# ------------------------------------------------------------------------------------- hand-built models
def _genes(n: int) -> list[str]:
    from sctab.census.genes import gencode_genes

    g = gencode_genes()
    return g.loc[g["feature_biotype"] == "protein_coding", "feature_id"].astype(str).head(n).tolist()


GENES = _genes(12)
G = dict(enumerate(GENES))
# marker gene -> class of each model; both read g0..g5, only the previous one g6, only the new one g7
PREVIOUS = {G[0]: T_CELL, G[1]: CD4, G[2]: CD4, G[3]: MAC, G[4]: B_CELL, G[5]: CD4, G[6]: B_CELL}
NEW = {G[0]: CD4, G[1]: T_CELL, G[2]: CD8, G[3]: ALV_MAC, G[4]: CD4, G[5]: CD4, G[7]: CD8}
# cells: (marker gene or None for no counts, how many)
CELLS = [(G[0], 5), (G[1], 4), (G[2], 3), (G[3], 6), (G[4], 2), (G[5], 7), (G[7], 2), (G[6], 1), (None, 2), (G[8], 1)]
N_CELLS = sum(n for _, n in CELLS)
EXPECTED = {  # (previous label, new label) -> (change, cells)
    ("T cell", "CD4-positive, alpha-beta T cell"): (FINER, 5),
    ("CD4-positive, alpha-beta T cell", "T cell"): (COARSER, 4),
    ("CD4-positive, alpha-beta T cell", "CD8-positive, alpha-beta T cell"): (SIBLING, 3),
    ("macrophage", "alveolar macrophage"): (FINER, 6),
    ("B cell", "CD4-positive, alpha-beta T cell"): (OTHER, 2),
    ("CD4-positive, alpha-beta T cell", "CD4-positive, alpha-beta T cell"): (SAME, 7),
    ("Unassigned", "CD8-positive, alpha-beta T cell"): (OTHER, 2),   # g7: the previous model reads no such gene
    ("B cell", "Unassigned"): (OTHER, 1),                            # g6: the new model reads no such gene
    ("Unassigned", "Unassigned"): (SAME, 3),                         # no counts, or only a gene neither reads
}


def _marker_folder(root: Path, rules: dict[str, str], genes: list[str], ontology) -> Path:
    """A linear pipeline model folder: logit of class k = 5 x log1p value of its marker genes."""
    import torch

    from sctab import models
    from sctab.models import FeatureSpace, TorchClassifier, build_model

    classes = list(dict.fromkeys(rules.values()))
    module = build_model("linear", len(genes), len(classes))
    with torch.no_grad():
        module.linear.weight.zero_()
        module.linear.bias.zero_()
        for gene, cl in rules.items():
            module.linear.weight[classes.index(cl), genes.index(gene)] = 5.0
    space = FeatureSpace(var=pd.DataFrame({"feature_id": genes, "feature_name": genes}),
                         classes=[ontology.label(c) for c in classes])
    return models.save(root / "linear", TorchClassifier(kind="linear", module=module, space=space),
                       target_sum=10_000.0, meta={"run_id": root.name, "seed": 0}, history=[])


def _class_ids(rules: dict[str, str], ontology) -> dict[str, str]:
    return {ontology.label(c): c for c in rules.values()}


def _bundle(root: Path, rules: dict[str, str], genes: list[str], ontology) -> Path:
    folder = _marker_folder(root, rules, genes, ontology)
    return write_bundle(folder, root / "bundle", class_ids=_class_ids(rules, ontology), ontology=ontology)


def _cells(genes: list[str]) -> anndata.AnnData:
    """The CELLS as raw counts (50 on the marker) over ``genes``, in a file order of its own."""
    rows = []
    for gene, n in CELLS:
        for _ in range(n):
            row = np.zeros(len(genes), np.float32)
            if gene is not None:
                row[genes.index(gene)] = 50
            rows.append(row)
    adata = anndata.AnnData(np.stack(rows), var=pd.DataFrame(index=genes))
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    return adata


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ontology):
    root = tmp_path_factory.mktemp("compare-with")
    prev_genes = [G[i] for i in (6, 5, 4, 3, 2, 1, 0)]          # each model its own gene order
    new_genes = [G[i] for i in (3, 0, 7, 5, 1, 2, 4)]
    previous = _bundle(root / "previous", PREVIOUS, prev_genes, ontology)
    new = _bundle(root / "new", NEW, new_genes, ontology)
    file_genes = [G[i] for i in (8, 3, 0, 7, 5, 1, 9, 4, 6, 2)]  # and the file one more, with genes neither reads
    path = root / "cells.h5ad"
    _cells(file_genes).write_h5ad(path)
    return {"root": root, "previous": previous, "new": new, "file": path, "prev_genes": prev_genes,
            "new_genes": new_genes, "file_genes": file_genes}


def _pairs(table: pd.DataFrame) -> dict:
    return {(r.previous_label, r.new_label): (r.change, int(r.cells)) for r in table.itertuples(index=False)}


def test_same_model_twice_is_same_everywhere(setup, obo_file, tmp_path):
    out = tmp_path / "same.csv"
    report = annotate_file(setup["file"], out, str(setup["new"]), compare_with=str(setup["new"]), ontology=obo_file,
                           progress=False)
    table = pd.read_csv(out, index_col=0)
    assert len(table) == N_CELLS and (table["sctab_change"] == SAME).all()
    assert (table["sctab_previous_label"] == table["sctab_label"]).all()
    assert report.changes.totals == {SAME: N_CELLS, FINER: 0, COARSER: 0, SIBLING: 0, OTHER: 0}
    assert set(report.changes.table["change"]) == {SAME}


def test_two_models_in_one_pass_through_the_cli(setup, obo_file, tmp_path, capsys):
    out = tmp_path / "cells.annotated.h5ad"
    assert cli(["annotate", str(setup["file"]), "-o", str(out), "--model", str(setup["new"]), "--compare-with",
                str(setup["previous"]), "--ontology", str(obo_file), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| T cell | CD4-positive, alpha-beta T cell | finer | 5 |" in printed
    assert "| macrophage | alveolar macrophage | finer | 6 |" in printed
    assert f"All {N_CELLS} cells: same 10 (30%), finer 11 (33%), coarser 4 (12%), sibling 3 (9%), other 5 (15%)." \
        in printed
    assert "compared with" in printed and "23 cells changed label" in printed
    js, md = changes_paths(out)
    assert js.name == "cells.annotated.changes.json" and md.name == "cells.annotated.changes.md"
    assert f"wrote {js} and {md}" in printed
    doc = json.loads(js.read_text())
    assert doc["n_cells"] == N_CELLS == sum(doc["totals"].values()) == sum(r["cells"] for r in doc["pairs"])
    got = {(r["previous_label"], r["new_label"]): (r["change"], r["cells"]) for r in doc["pairs"]}
    assert got == EXPECTED
    assert [r["cells"] for r in doc["pairs"]] == sorted((c for _, c in EXPECTED.values()), reverse=True)
    assert md.read_text().startswith(f"# Labels of {setup['new']} against {setup['previous']}")
    written = anndata.read_h5ad(out)
    obs = written.obs
    # each cell's change follows from its own pair, and the new labels are the new model's alone
    expected_change = [EXPECTED[(p, n)][0] for p, n in zip(obs["sctab_previous_label"], obs["sctab_label"])]
    assert list(obs["sctab_change"]) == expected_change
    assert obs["sctab_previous_cell_type_ontology_term_id"].iloc[0] == T_CELL
    alone = annotate_file(setup["file"], tmp_path / "alone.csv", str(setup["new"]), progress=False)
    assert alone.compare_with is None and not changes_paths(tmp_path / "alone.csv")[0].exists()
    assert (pd.read_csv(tmp_path / "alone.csv", index_col=0)["sctab_label"].to_numpy()
            == obs["sctab_label"].to_numpy()).all()
    uns = written.uns["sctab_changes"]
    assert int(uns["n_cells"]) == N_CELLS and int(uns["table"]["cells"].sum()) == N_CELLS
    assert written.uns["sctab_annotation"]["previous_gene_coverage"] == 1.0
    assert written.uns["sctab_annotation"]["compare_with"] == str(setup["previous"])


def test_one_pass_over_the_file(setup, obo_file, tmp_path, monkeypatch):
    """Every block of rows is read once for both models: the real reader, wrapped to record what it is asked."""
    from dataclasses import replace

    import sctab.annotation.api as files

    asked = []

    def recording(*args, **kwargs):
        source = choose(*args, **kwargs)
        read = source.matrix.read
        return replace(source, matrix=replace(source.matrix, read=lambda a, b: asked.append((a, b)) or read(a, b)))

    choose = files.choose_matrix
    monkeypatch.setattr(files, "choose_matrix", recording)
    report = annotate_file(setup["file"], tmp_path / "out.csv", str(setup["new"]), compare_with=str(setup["previous"]),
                           ontology=obo_file, batch_size=8, progress=False)
    assert asked == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 33)]
    assert _pairs(report.changes.table) == EXPECTED  # the blocks' seams change nothing


def test_in_memory_api_gives_the_same_changes(setup, obo_file):
    adata = anndata.read_h5ad(setup["file"])
    out = annotate(adata, str(setup["new"]), compare_with=str(setup["previous"]), ontology=obo_file, progress=False,
                   copy=True)
    assert _pairs(out.uns["sctab_changes"]["table"]) == EXPECTED
    assert "sctab_change" not in adata.obs and out.obs["sctab_change"].value_counts().sum() == N_CELLS


def test_two_pipeline_models_on_the_store_cells(store_dir, ontology, obo_file, tmp_path):
    """The pipeline's own kinds on the census cells: the linear model against the two-member scTab ensemble
    (random weights, the store's classes): every cell's change is its pair's, and the summary adds up."""
    from sctab.data.store import Store
    from sctab.registry.register import store_class_ids
    from tests.model_folders import write_model_folders

    folders = write_model_folders(tmp_path / "models", store_dir)
    ids = store_class_ids(store_dir)
    linear = write_bundle(folders / "linear", tmp_path / "linear", class_ids=ids, ontology=ontology)
    ensemble = write_bundle(folders / "sctab", tmp_path / "sctab", class_ids=ids, ontology=ontology)
    store = Store(store_dir)
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.3, 2.0, size=(600, store.n_genes))).astype(np.float32)  # raw counts
    adata = anndata.AnnData(counts, var=pd.DataFrame(index=store.var["feature_id"].astype(str).to_numpy()))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    out = annotate(adata, str(ensemble), compare_with=str(linear), ontology=obo_file, min_probability=0,
                   progress=False, copy=True)
    obs, changes = out.obs, out.uns["sctab_changes"]
    assert int(changes["table"]["cells"].sum()) == changes["n_cells"] == sum(changes["totals"].values()) == 600
    pairs = zip(obs["sctab_previous_cell_type_ontology_term_id"], obs["sctab_cell_type_ontology_term_id"])
    assert list(obs["sctab_change"]) == [classify_change(p, n, ontology) for p, n in pairs]
    assert len(set(obs["sctab_change"])) > 1 and len(changes["table"]) > 3  # different models, several pairs
    counted = obs.groupby(["sctab_previous_label", "sctab_label"], observed=True).size()
    for r in changes["table"].itertuples(index=False):
        assert counted[(r.previous_label, r.new_label)] == r.cells


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unknown-folder", "unknown-alias", "disjoint-models", "no-genes-of-one",
                                  "low-coverage"])
def test_bad_compare_with_is_a_clear_error_and_writes_nothing(case, setup, ontology, obo_file, tmp_path, tracking,
                                                             capsys):
    src = tmp_path / "in.h5ad"
    anndata.read_h5ad(setup["file"]).write_h5ad(src)
    other, extra = str(setup["previous"]), []
    if case == "unknown-folder":
        other = str(tmp_path / "no-such-model")
        expect = f"--compare-with: model {other!r} is neither a models:/ or runs:/ URI nor an existing folder"
    elif case == "unknown-alias":
        other = "models:/cw-nope@champion"
        expect = "--compare-with: cannot load model models:/cw-nope@champion: there is no registered model 'cw-nope'"
    elif case == "disjoint-models":
        far = {G[10]: CD4, G[11]: CD8}
        other = str(_bundle(tmp_path / "far", far, [G[10], G[11]], ontology))
        expect = "share no genes"
    elif case == "no-genes-of-one":  # the file lacks every gene of the --compare-with model
        adata = anndata.read_h5ad(setup["file"])
        adata[:, [g for g in adata.var_names if g not in setup["prev_genes"]]].copy().write_h5ad(src)
        other = str(_bundle(tmp_path / "mixed", {G[6]: CD4, G[0]: CD8}, [G[6], G[0]], ontology))
        expect = f"--compare-with {other}: none of the model's 2 genes is in {src}"
    else:  # every gene of the new model, 6 of the previous one's 7
        adata = anndata.read_h5ad(setup["file"])
        adata[:, [g for g in adata.var_names if g != G[6]]].copy().write_h5ad(src)
        extra = ["--min-gene-coverage", "0.9"]
        expect = f"covers 6 of the --compare-with model {other}'s 7 genes (85.7%), below the minimum gene coverage"

    def listing():  # the test's own MLflow store (for the alias case) aside
        return sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("mlflow.db", "mlruns")))

    before = listing()
    rc = cli(["annotate", str(src), "-o", str(tmp_path / "out.h5ad"), "--model", str(setup["new"]),
              "--compare-with", other, "--ontology", str(obo_file), "-q", *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sctab: error:")]  # MLflow logs its own lines
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert expect in errors[0], err
    assert listing() == before  # no output, no .changes files, no temporaries
    if case == "low-coverage":  # the same file passes the same minimum without the comparison
        assert cli(["annotate", str(src), "-o", str(tmp_path / "out.h5ad"), "--model", str(setup["new"]),
                    "-q", *extra]) == 0


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        cli(["annotate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--compare-with MODEL", "<key>_previous_label", "<key>_change", "finer = the new label is a Cell "
                  "Ontology descendant", "sibling = they share a direct parent", "<OUT stem>.changes.json"):
        assert words in text, words
    with pytest.raises(SystemExit):
        cli(["promote", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--check FILE.h5ad", "promotion_check/<FILE stem>.changes.json", "promotion_check_run"):
        assert words in text, words


# ----------------------------------------------------------------------------------------------- promote --check
def _promote_with_check(name: str, setup, ontology, obo_file, tmp_path, capsys) -> None:
    """Register the previous model, promote it with --check (no champion: no table), register the new one,
    refuse a bad check file, promote with --check: the table before the move, the record on the version."""
    import mlflow

    from sctab.registry import register_folder
    from sctab.registry.register import client
    from sctab.tracking import tracking_uri

    def register(rules, genes, f1):
        folder = _marker_folder(tmp_path / f"m{f1}", rules, genes, ontology)
        return register_folder(folder, name, class_ids=_class_ids(rules, ontology), ontology=ontology,
                               params={"profile": "test"}, test_f1=f1)

    register(PREVIOUS, setup["prev_genes"], 0.70)
    check = ["--check", str(setup["file"]), "--ontology", str(obo_file)]
    assert cli(["promote", name, *check]) == 0
    out = capsys.readouterr().out
    assert "has no @champion yet: no labels to compare" in out and "promoted: no champion yet" in out
    assert "| previous label |" not in out and "promotion_check_run" not in client().get_model_version(name, "1").tags

    register(NEW, setup["new_genes"], 0.80)
    # a file that cannot be read checks nothing and promotes nothing
    assert cli(["promote", name, "--check", str(tmp_path / "missing.h5ad")]) == 2
    assert "missing.h5ad does not exist" in capsys.readouterr().err
    assert str(client().get_model_version_by_alias(name, "champion").version) == "1"

    assert cli(["promote", name, *check]) == 0
    out = capsys.readouterr().out
    table = out.index("| T cell | CD4-positive, alpha-beta T cell | finer | 5 |")
    assert table < out.index("promoted: test macro F1 0.8000 >= champion's 0.7000")  # shown before the move
    assert f"All {N_CELLS} cells: same 10 (30%)" in out
    c = client()
    mv = c.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == "2"
    run_id = mv.tags["promotion_check_run"]
    assert mv.tags["promotion_check"].startswith(f"{N_CELLS} cells of cells.h5ad: same 30.3%")
    run = c.get_run(run_id)
    assert run.info.run_name == f"promote {name} v2" and run.data.params["check_file"] == str(setup["file"])
    assert run.data.metrics["check_cells"] == N_CELLS and run.data.metrics["check_finer"] == 11
    names = sorted(a.path for a in c.list_artifacts(run_id, "promotion_check"))
    assert names == ["promotion_check/cells.changes.json", "promotion_check/cells.changes.md"]
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="promotion_check",
                                                     tracking_uri=tracking_uri(), dst_path=str(tmp_path / "dl")))
    doc = json.loads((local / "cells.changes.json").read_text())
    assert doc["new_model"] == f"models:/{name}/2" and doc["previous_model"] == f"models:/{name}/1"
    assert sum(doc["totals"].values()) == N_CELLS and set(doc["totals"]) == set(CHANGES)
    assert {(r["previous_label"], r["new_label"]): (r["change"], r["cells"]) for r in doc["pairs"]} == EXPECTED
    md = (local / "cells.changes.md").read_text()
    assert md.startswith(f"# Labels of models:/{name}/2 against models:/{name}/1")


def test_promote_check_prints_and_records_the_changes(setup, ontology, obo_file, tracking, tmp_path, capsys):
    _promote_with_check("cw", setup, ontology, obo_file, tmp_path, capsys)
    assert cli(["promote", "cw", "--model", "other"]) == 2  # NAME and --model are one setting
    assert "the model is named twice, 'cw' and --model 'other'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.needs_root  # PostgreSQL's server (`make postgres`)
@pytest.mark.timeout(480)
def test_promote_check_through_the_team_server(setup, ontology, obo_file, tmp_path, monkeypatch, capsys):
    """The same against PostgreSQL + `mlflow server --app-name basic-auth` with served artifacts, where the
    versions are downloaded and the check's files uploaded over HTTP."""
    from tests.mlflow_server import team_server_running

    with team_server_running() as server:
        for k, v in server.client_env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.chdir(tmp_path)
        _promote_with_check("cw-team", setup, ontology, obo_file, tmp_path, capsys)


def test_the_report_page_carries_the_change_table(setup, obo_file, tmp_path):
    out, page = tmp_path / "cells.annotated.h5ad", tmp_path / "report.html"
    assert cli(["annotate", str(setup["file"]), "-o", str(out), "--model", str(setup["new"]), "--compare-with",
                str(setup["previous"]), "--ontology", str(obo_file), "--report", str(page), "-q"]) == 0
    html = page.read_text()
    assert "What the model changes against the previous one (--compare-with)" in html
    assert "alveolar macrophage" in html and "finer" in html and "sibling" in html
