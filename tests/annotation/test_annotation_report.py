"""`sctab annotate ... --report OUT.html`: one self-contained page (embedding, dot plot, label shares, gene
coverage, comparison tables), checked as text and rendered in headless Chromium."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from sctab.annotation import AnnotateError
from sctab.annotation.html_render import markdown_html
from sctab.annotation.html_report import Section, build_page, write_report
from sctab.annotation.report_tables import dot_table, label_shares
from sctab.cli import main as cli
from tests.project.test_dvc_pipeline import CHROMIUM

NOTE = Path("/tmp/note")
SECTIONS = ("overview", "embedding", "dotplot", "labelling", "coverage")


def _external(page: str) -> list[str]:
    """src/href attribute values that point outside the page."""
    return [v for v in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) if not v.startswith(("data:", "#"))] \
        + re.findall(r"https?://", page)


@pytest.fixture(scope="module")
def src(test_counts, tmp_path_factory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("report") / "cells.h5ad"
    test_counts.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def voted(src, bundle_dir):  # noqa: F811
    """The CLI run with majority voting and a report, as a biologist would start it."""
    out = src.parent / "voted.h5ad"
    page = src.parent / "voted.html"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q", "--majority-voting",
                "--report", str(page)]) == 0
    return out, page


def test_page_is_self_contained_with_every_section(voted):
    out, page = voted
    text = page.read_text()
    assert _external(text) == []
    assert "<script" not in text.lower()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', text)) == 3  # embedding, dots, shares
    # no obsm embedding in the input: computed from its expression
    assert "UMAP computed here on a PCA of the input's normalised expression" in html.unescape(text)
    assert "sctab_over_clustering" in text and "Leiden at resolution" in text
    obs = anndata.read_h5ad(out).obs
    shares = label_shares(obs, "sctab")
    assert shares["cells"].sum() == len(obs)
    assert f"<td class=\"n\">{shares['cells'].iloc[0]:,}</td>" in text
    assert "gene coverage" in text and "%" in text
    assert not list(page.parent.glob(".voted.html.tmp-*"))


def test_existing_umap_group_column_and_probability_matrix(src, bundle_dir, test_counts, tmp_path):  # noqa: F811
    a = test_counts.copy()
    rng = np.random.default_rng(1)
    a.obsm["X_umap"] = rng.normal(size=(a.n_obs, 2))
    a.obs["cluster"] = pd.Categorical([f"c{i % 4}" for i in range(a.n_obs)])
    path = tmp_path / "with-umap.h5ad"
    a.write_h5ad(path)
    out, page = tmp_path / "t.csv", tmp_path / "t.html"
    assert cli(["annotate", str(path), "-o", str(out), "--model", str(bundle_dir), "-q", "--probabilities",
                "--report", str(page), "--report-groupby", "cluster"]) == 0
    raw = page.read_text()
    text = html.unescape(raw)
    assert "UMAP from the input's obsm['X_umap'] (all " in text
    assert "Rows: obs column 'cluster'" in text
    assert "over all the cluster's cells (from the probability matrix)" in text
    for c in ("c0 (", "c3 ("):
        assert c not in text  # the cluster names are in the figure, not in the text
    assert _external(raw) == []


def test_pca_is_used_and_big_inputs_are_sampled(src, test_counts, tmp_path, voted):  # noqa: F811
    a = test_counts.copy()
    a.obsm["X_pca"] = np.random.default_rng(2).normal(size=(a.n_obs, 10))
    path = tmp_path / "with-pca.h5ad"
    a.write_h5ad(path)
    page = build_page(path, voted[0], {"n_cells": a.n_obs}, max_cells=50)
    xy, labels, unc, how = page.embedding
    assert xy.shape == (50, 2) and len(labels) == 50 and len(unc) == 50
    assert how == f"UMAP computed here on the input's obsm['X_pca'] (10 components; 50 of {a.n_obs:,} cells, " \
                  f"sampled at random (seed 0))"
    assert page.dots is not None  # the output's over-clustering


def test_label_shares_name_each_kind_of_cell():
    obs = pd.DataFrame({"k_label": ["T", "T", "Unassigned", "Unassigned", "B"],
                        "k_cell_type_ontology_term_id": ["CL:1", "CL:1", "", "", "CL:2"],
                        "k_coarse_ontology_term_id": ["CL:1", "CL:9", "CL:9", "", "CL:2"],
                        "k_coarse_label": ["T", "lymphocyte", "lymphocyte", "Unassigned", "B"],
                        "k_probability": [0.9, 0.4, 0.2, np.nan, 0.8]})
    shares = label_shares(obs, "k", 0.3)
    assert shares["cells"].tolist() == [2, 1, 1, 1]
    assert shares.index[2] == "'Unassigned': below the minimum probability 0.3 (a coarse label still given)"
    assert shares["share"].tolist() == ["40.0%", "20.0%", "20.0%", "20.0%"]
    from sctab.annotation.report_tables import coarse_labels

    assert coarse_labels(obs, "k")["cells"].to_dict() == {"lymphocyte": 2}


def test_dot_table_numbers():
    clusters = ["a", "a", "a", "b", "b"]
    labels = ["T", "T", "B", "B", "B"]
    p = [0.9, 0.7, 0.4, 0.8, 0.6]
    t = dot_table(clusters, labels, p)
    assert list(t.fraction.columns) == ["B", "T"]
    assert t.fraction.loc["a", "T"] == pytest.approx(2 / 3) and t.fraction.loc["b", "B"] == 1.0
    assert t.probability.loc["a", "T"] == pytest.approx(0.8) and np.isnan(t.probability.loc["b", "T"])
    m = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6]])
    t = dot_table(clusters, labels, p, matrix=m, classes=["T", "B"])
    assert t.probability.loc["b", "T"] == pytest.approx(0.3)  # CellTypist's: over all the cluster's cells
    assert t.probability.loc["a", "B"] == pytest.approx(0.8 / 3)
    assert list(t.fraction.index) == ["b", "a"]  # ordered by main label, as a diagonal
    t = dot_table(clusters, labels, p, max_rows=1, max_columns=1)
    assert t.fraction.shape == (1, 1) and "1 largest of 2 clusters" in t.dropped


def test_compare_labels_table_and_extra_sections(src, bundle_dir, obo_file, test_counts, tmp_path):  # noqa: F811
    column = "cell_type_ontology_term_id"
    assert column in test_counts.obs
    out, page = tmp_path / "c.h5ad", tmp_path / "c.html"
    assert cli(["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q", "--ontology",
                str(obo_file), "--compare-labels", column, "--report", str(page)]) == 0
    text = html.unescape(page.read_text())
    assert f"Your labels (obs column '{column}') against the predictions" in text
    assert "<th>relation to the model</th>" in text and "Ontology-corrected macro F1" in text
    first = test_counts.obs[column].astype(str).value_counts().index[0]
    assert f"<td>{first}</td>" in text
    assert "No clusters to plot against" in text  # no voting, no --report-groupby
    # the generic hook a comparison with another model plugs into
    extra = build_page(src, out, {}, sections=[
        Section("Changes against model B", markdown="| from | to | cells |\n|---|---|---|\n| T | B | 3 |",
                note="pairs of labels"),
        Section("As rows", rows=[{"label": "T", "cells": 7}])]).html()
    assert '<section id="extra-0"><h2>Changes against model B</h2>' in extra
    assert "<tr><td>T</td><td>B</td><td>3</td></tr>" in extra and '<td class="n">7</td>' in extra


def test_markdown_tables_escape_html():
    got = markdown_html("# Title `x`\n\n| a | b |\n|---|---|\n| <i> | 1 |\ntext")
    assert got == ("<h3>Title <code>x</code></h3>\n<table><tr><th>a</th><th>b</th></tr><tr><td>&lt;i&gt;</td>"
                   "<td>1</td></tr></table>\n<p>text</p>")


@pytest.mark.needs_root  # Debian's Chromium (`make browser`)
def test_rendered_in_chromium_with_its_figures(voted, tmp_path):
    from playwright.sync_api import sync_playwright

    _, page_path = voted
    shot = tmp_path / "annotation-report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, "
                                                     "e.naturalHeight, e.getBoundingClientRect().width])")
            assert len(sizes) == 3
            for complete, w, h, shown in sizes:
                assert complete and w > 300 and h > 100 and shown > 300
            for title in ("Embedding: predicted label and uncertainty", "Dot plot: predicted labels by cluster",
                          "Unassigned and coarse-labelled cells", "Gene coverage"):
                assert page.get_by_role("heading", name=title).is_visible()
            page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert shot.stat().st_size > 100_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] > 1500 and pixels.std() > 0.05  # a long page, not blank
    NOTE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, NOTE / "annotation-report.png")


@pytest.mark.parametrize("case", ["not-html", "no-folder", "a-folder", "groupby-absent", "groupby-alone"])
def test_bad_report_options_fail_before_any_work(case, src, bundle_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out.h5ad"
    (tmp_path / "d.html").mkdir()
    report = {"not-html": tmp_path / "r.pdf", "no-folder": tmp_path / "missing" / "r.html",
              "a-folder": tmp_path / "d.html"}.get(case, tmp_path / "r.html")
    args = ["annotate", str(src), "-o", str(out), "--model", str(bundle_dir), "-q"]
    args += [] if case == "groupby-alone" else ["--report", str(report)]
    args += ["--report-groupby", "leiden"] if case.startswith("groupby") else []
    assert cli(args) == 2
    err = capsys.readouterr().err
    expected = {"not-html": "must end in .html", "no-folder": f"the folder {tmp_path / 'missing'} does not exist",
                "a-folder": "is a directory", "groupby-absent": "obs column 'leiden' is not in",
                "groupby-alone": "give --report too"}[case]
    assert expected in err
    assert not out.exists() and not (tmp_path / "r.html").exists()
    with pytest.raises(AnnotateError, match="must end in .html"):  # the API checks the same way
        write_report(tmp_path / "x.htm", src, out, {})


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        cli(["annotate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--report OUT.html" in out and "self-contained HTML page" in out and "dot plot" in out
    assert "--report-groupby COLUMN" in out


@pytest.mark.slow  # 23-40 s here (2 shared cores), most of it pynndescent's numba compilation
def test_neighbours_from_pynndescent_size_on():
    """From 8,192 cells scanpy's kNN goes through pynndescent, whose output scanpy cannot read unwrapped."""
    from sctab.annotation.report_embedding import _neighbours
    from sctab.annotation.voting import PYNNDESCENT_FROM

    a = anndata.AnnData(np.zeros((PYNNDESCENT_FROM, 1), dtype=np.float32))
    a.obsm["X_pca"] = np.random.default_rng(3).normal(size=(PYNNDESCENT_FROM, 5)).astype(np.float32)
    _neighbours(a, 0)
    graph = a.obsp["connectivities"]
    assert graph.shape == (PYNNDESCENT_FROM, PYNNDESCENT_FROM) and graph.nnz >= 14 * PYNNDESCENT_FROM
