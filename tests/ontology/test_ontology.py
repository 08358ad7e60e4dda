"""sctab.ontology against cellxgene-ontology-guide's own OntologyParser on the same CL release."""

from __future__ import annotations

import random
import runpy
import sys

import numpy as np
import pronto
import pytest
from cellxgene_ontology_guide.ontology_parser import OntologyParser
from cellxgene_ontology_guide.supported_versions import load_supported_versions

from sctab.ontology import CellOntology, load_bundled_cl, load_cell_ontology, write_cl_obo
from sctab.ontology import obo as obo_module
from tests.paths import PIPELINES

VERSION = "v2026-03-26"
CD4_T, CD8_T, T_CELL, B_CELL, LYMPHOCYTE = "CL:0000624", "CL:0000625", "CL:0000084", "CL:0000236", "CL:0000542"
NATIVE, ROOT = "CL:0000003", "CL:0000000"
NAMED = [CD4_T, CD8_T, T_CELL, B_CELL, LYMPHOCYTE, NATIVE, ROOT, "CL:0000540", "CL:0017503"]


@pytest.fixture(scope="session")
def obo_path(tmp_path_factory):
    return write_cl_obo(VERSION, tmp_path_factory.mktemp("ontology") / "cl.obo")


@pytest.fixture(scope="session")
def co(obo_path) -> CellOntology:
    return CellOntology.from_obo(obo_path)


@pytest.fixture(scope="session")
def parser() -> OntologyParser:
    """The parser of the CELLxGENE schema whose CL release is VERSION (not just the latest schema)."""
    schemas = [s for s, info in load_supported_versions().items() if info["ontologies"]["CL"]["version"] == VERSION]
    assert schemas, f"no schema of the installed cellxgene-ontology-guide uses CL {VERSION}"
    p = OntologyParser(schema_version=sorted(schemas)[-1])
    assert p.cxg_schema.supported_ontologies["CL"]["version"] == VERSION
    return p


@pytest.fixture(scope="session")
def bundle() -> dict[str, dict]:
    return load_bundled_cl(VERSION)


def _sample(bundle, n=200, seed=0) -> list[str]:
    live = sorted(t for t, m in bundle.items() if not m["deprecated"])
    return NAMED + random.Random(seed).sample(live, n)


# ---------------------------------------------------------------- the OBO file
def test_obo_loads_with_pronto(obo_path, bundle):
    onto = pronto.Ontology(str(obo_path))
    assert onto.metadata.data_version == VERSION
    assert {t.id for t in onto.terms()} == set(bundle)
    assert onto[CD4_T].name == "CD4-positive, alpha-beta T cell"
    assert {t.id for t in onto[CD4_T].superclasses(distance=1, with_self=False)} == {"CL:0000791"}
    assert all((onto[t].name or "") == m["label"] for t, m in bundle.items())
    assert {t for t in bundle if onto[t].obsolete} == {t for t, m in bundle.items() if m["deprecated"]}


def test_deprecated_terms_without_label_have_no_name_line(obo_path, bundle, co):
    unnamed = sorted(t for t, m in bundle.items() if m["deprecated"] and not m["label"])
    assert unnamed, "the bundle has no unnamed deprecated term any more; this test checks nothing"
    stanzas = {s.split("\n", 1)[0].removeprefix("id: "): s for s in obo_path.read_text().split("[Term]\n")[1:]}
    assert "name:" not in stanzas[unnamed[0]] and "is_obsolete: true" in stanzas[unnamed[0]]
    assert co.label(unnamed[0]) == "" and co.is_obsolete(unnamed[0])


def test_escaping_round_trips_through_pronto(tmp_path, monkeypatch):
    odd = 'say "hi" \\ back! {x}'
    fake = {
        "CL:0000000": {"label": "cell", "ancestors": {}, "deprecated": False},
        "CL:0000001": {
            "label": odd,
            "synonyms": [odd, 'a "quoted" one'],
            "description": "line one\nline two",
            "ancestors": {"CL:0000000": 1},
            "deprecated": False,
        },
        "CL:0000002": {"label": "", "ancestors": {}, "deprecated": True, "replaced_by": "GO:0005737"},
    }
    monkeypatch.setattr(obo_module, "load_bundled_cl", lambda version: fake)
    onto = pronto.Ontology(str(write_cl_obo("vtest", tmp_path / "odd.obo")))
    assert onto["CL:0000001"].name == odd
    assert {s.description for s in onto["CL:0000001"].synonyms} == {odd, 'a "quoted" one'}
    assert onto["CL:0000001"].definition == "line one\nline two"
    assert onto["CL:0000002"].name is None and onto["CL:0000002"].obsolete


def test_unknown_version_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"v1999-01-01.*not bundled.*available: .*v2026-03-26"):
        write_cl_obo("v1999-01-01", tmp_path / "cl.obo")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_rewrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "cl.obo"
    out.write_text("stale")
    write_cl_obo(VERSION, out)
    assert out.read_text().startswith("format-version: 1.2\n")
    assert [p.name for p in tmp_path.iterdir()] == ["cl.obo"]


# ---------------------------------------------------------------- equality with OntologyParser
def test_hierarchy_matches_ontology_parser(co, parser, bundle):
    for t in _sample(bundle):
        assert co.ancestors(t) == set(parser.get_term_ancestors(t)), t
        assert co.parents(t) == set(parser.get_term_parents(t)), t
        assert co.descendants(t) == set(parser.get_term_descendants(t)), t
        assert co.n_ancestors(t) == len(co.ancestors(t)) == len(parser.get_term_ancestors(t)), t
        assert t not in co.ancestors(t) and t not in co.descendants(t)


def test_every_ancestor_set_equals_the_bundle(co, bundle):
    """Closure of the emitted edges = the bundle, for all terms (cheap; catches any lost relation)."""
    wrong = [t for t, m in bundle.items() if co.ancestors(t) != set(m["ancestors"])]
    assert wrong == []
    inverted: dict[str, set[str]] = {t: set() for t in bundle}
    for t, m in bundle.items():
        for a in m["ancestors"]:
            inverted[a].add(t)
    assert [t for t in bundle if co.descendants(t) != inverted[t]] == []


def test_terms_reaching_cl_only_through_other_ontologies(co, parser):
    """CL:0017503 basophilic cytoplasm: is_a GO cytoplasm, part_of cell; no CL parent at distance 1."""
    assert parser.get_term_parents("CL:0017503") == []
    assert co.parents("CL:0017503") == frozenset()
    assert co.ancestors("CL:0017503") == {ROOT}
    assert "CL:0017503" in co.descendants(ROOT)


def test_known_hierarchy(co):
    assert T_CELL in co.ancestors(CD4_T) and LYMPHOCYTE in co.ancestors(T_CELL)
    assert CD4_T in co.descendants(T_CELL) and B_CELL not in co.descendants(T_CELL)
    assert co.parents(CD4_T) == {"CL:0000791"}
    assert CD4_T in co.children("CL:0000791")
    assert co.ancestors(ROOT) == frozenset() and co.n_ancestors(CD4_T) >= 7


def test_native_cell_is_obsolete(co, parser):
    """CL:0000003 is obsolete in this release: no hierarchy, replaced by the root 'cell'."""
    assert co.is_obsolete(NATIVE) and co.replaced_by(NATIVE) == ROOT
    assert co.descendants(NATIVE) == set(parser.get_term_descendants(NATIVE)) == set()
    assert co.ancestors(NATIVE) == frozenset()
    assert not co.is_obsolete(CD4_T) and co.replaced_by(CD4_T) is None


# ---------------------------------------------------------------- queries
def test_labels(co):
    assert co.label(T_CELL) == "T cell"
    assert co.term_id("B cell") == B_CELL
    assert all(co.term_id(co.label(t)) == t for t in NAMED)
    with pytest.raises(KeyError, match="no such cell type"):
        co.term_id("no such cell type")


def test_is_subtype(co):
    assert co.is_subtype(CD4_T, T_CELL) and co.is_subtype(CD4_T, T_CELL, strict=True)
    assert co.is_subtype(T_CELL, T_CELL) and not co.is_subtype(T_CELL, T_CELL, strict=True)
    assert not co.is_subtype(T_CELL, CD4_T)
    assert not co.is_subtype(B_CELL, T_CELL)


def test_child_matrix(co):
    ids = [T_CELL, CD4_T, B_CELL, LYMPHOCYTE]
    m = co.child_matrix(ids)
    assert m.shape == (4, 4) and m.dtype == np.int64
    assert (np.diag(m) == 1).all()
    assert m[0, 1] == 1 and m[1, 0] == 0  # T cell row: CD4 T is a subtype; not the reverse
    assert m[0, 2] == 0 and m[2, 0] == 0
    assert m[3, :].tolist() == [1, 1, 1, 1] and m[:, 3].tolist() == [0, 0, 0, 1]


def test_lowest_common_ancestor(co):
    assert co.lowest_common_ancestor([CD4_T]) == CD4_T
    assert co.lowest_common_ancestor([CD4_T, T_CELL]) == T_CELL
    assert co.lowest_common_ancestor([T_CELL, B_CELL]) == LYMPHOCYTE
    lca = co.lowest_common_ancestor([CD4_T, CD8_T])
    assert co.is_subtype(lca, T_CELL, strict=True)
    assert co.is_subtype(CD4_T, lca) and co.is_subtype(CD8_T, lca)
    with pytest.raises(ValueError):
        co.lowest_common_ancestor([])


@pytest.mark.parametrize(
    "call",
    [
        lambda co: co.ancestors("CL:9999999"),
        lambda co: co.descendants("CL:9999999"),
        lambda co: co.label("CL:9999999"),
        lambda co: co.parents("CL:9999999"),
        lambda co: co.is_subtype(CD4_T, "CL:9999999"),
        lambda co: co.child_matrix([T_CELL, "CL:9999999"]),
    ],
)
def test_unknown_id_names_it_and_the_file(co, obo_path, call):
    with pytest.raises(KeyError) as err:
        call(co)
    assert "CL:9999999" in str(err.value) and str(obo_path) in str(err.value)


def test_load_cell_ontology_caches_on_resolved_path(obo_path, monkeypatch):
    monkeypatch.chdir(obo_path.parent)
    a = load_cell_ontology(obo_path)
    assert load_cell_ontology("cl.obo") is a and load_cell_ontology(str(obo_path)) is a
    assert a.version == VERSION
    with pytest.raises(FileNotFoundError, match="missing.obo"):
        load_cell_ontology(obo_path.parent / "missing.obo")


def test_pipeline_entry_point(tmp_path, monkeypatch, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"profile: t\ncensus: {{}}\nontology: {{cl_version: {VERSION}}}\nfilters: {{}}\nsplit: {{}}\nstore: {{}}\n"
    )
    out = tmp_path / "out" / "cl.obo"
    monkeypatch.setattr(sys, "argv", ["ontology.py", "--params", str(params), "--out", str(out)])
    runpy.run_path(str(PIPELINES / "ontology.py"), run_name="__main__")
    assert f"wrote {len(load_bundled_cl(VERSION))} " in capsys.readouterr().out
    assert CellOntology.from_obo(out).version == VERSION
