"""Search spaces: the shipped ones load and pass the models' checks; bad ones fail before any trial."""

from __future__ import annotations

import pytest
import yaml

from sctab.train.search_space import CONF_DIR, SearchSpaceError, check_against_model, load_search_space


@pytest.mark.parametrize("model", ["xgboost", "celltypist", "linear", "mlp"])
def test_shipped_spaces_are_valid(model, census_params):
    space = load_search_space(model)
    check_against_model(space, census_params)
    tune_space = space.to_tune()
    assert set(tune_space) == set(space.space) and space.default


def test_randint_includes_both_bounds():
    space = load_search_space("xgboost")
    lo, hi = space.space["max_depth"]["randint"]
    dist = space.to_tune()["max_depth"]
    assert (dist.lower, dist.upper) == (lo, hi + 1)  # Ray's upper bound is exclusive


def _write(tmp_path, doc) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(p)


@pytest.mark.parametrize("doc, message", [
    ({"space": {}}, "empty"),
    ({"default": {"eta": 0.3}}, "empty"),
    ("space: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "not a YAML mapping"),
    ({"space": {"eta": {"gaussian": [0, 1]}}}, "unknown distribution"),
    ({"space": {"eta": {"uniform": [0.5, 0.1]}}}, "must be below"),
    ({"space": {"eta": {"loguniform": [0.0, 0.1]}}}, "positive low"),
    ({"space": {"max_depth": {"randint": [2.5, 6]}}}, "integer bounds"),
    ({"space": {"eta": {"uniform": [0.1]}}}, "needs 2 finite numbers"),
    ({"space": {"eta": {"choice": []}}}, "non-empty"),
    ({"space": {"eta": 0.1}}, "one distribution"),
    ({"space": {"eta": {"uniform": [0.1, 0.2]}}, "trials": 3}, "unknown section"),
    ({"space": {"eta": {"uniform": [0.1, 0.2]}}, "points_to_evaluate": [{"max_depth": 3}]}, "not in the space"),
])
def test_malformed_spaces_are_errors(doc, message, tmp_path):
    with pytest.raises(SearchSpaceError, match=message):
        load_search_space("xgboost", _write(tmp_path, doc))


def test_unknown_setting_is_refused_by_the_model(tmp_path, census_params):
    space = load_search_space("xgboost", _write(tmp_path, {"space": {"learning_rte": {"uniform": [0.1, 0.3]}}}))
    with pytest.raises(SearchSpaceError, match="learning_rte"):
        check_against_model(space, census_params)
    space = load_search_space("xgboost", _write(tmp_path, {"space": {"subsample": {"uniform": [0.5, 1.5]}}}))
    with pytest.raises(SearchSpaceError, match="subsample"):  # out of the model's range at the upper bound
        check_against_model(space, census_params)
    space = load_search_space("linear", _write(tmp_path, {"space": {"learning_rate": {"uniform": [0.1, 0.3]}}}))
    with pytest.raises(SearchSpaceError, match="learning_rate"):
        check_against_model(space, census_params)


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="no tuning for model"):
        load_search_space("svm")
    with pytest.raises(SearchSpaceError, match="does not exist"):
        load_search_space("xgboost", tmp_path / "nope.yaml")
    assert (CONF_DIR / "xgboost.yaml").exists()
