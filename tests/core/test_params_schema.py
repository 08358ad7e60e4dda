"""The params schema: every profile builds, and a bad key is an error naming its dotted path."""

import copy

import pytest
import yaml

from sctab.config import PROFILES_DIR, ConfigError, available_profiles, load_typed_params
from sctab.params_schema import (
    FiltersParams,
    NeuralModelParams,
    Params,
    build_params,
    defaults_of,
)


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_builds(name):
    p = build_params(yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text()), name)
    assert isinstance(p, Params) and p.profile == name
    assert p.models.sctab.arch and p.split.fractions["train"] > 0


def test_params_yaml_builds_typed(tmp_path):
    p = load_typed_params("params.yaml")
    assert isinstance(p.models.sctab, NeuralModelParams) and isinstance(p.store.target_sum, float)


@pytest.mark.parametrize("path, value, message", [
    (("models", "sctab", "lrr"), 0.1, r"params.models.sctab: unknown key\(s\) lrr"),
    (("split", "seed"), "one", r"params.split.seed must be an integer"),
    (("split", "by"), "lane", r"params.split.by must be one of donor, cell"),
    (("store", "target_sum"), True, r"params.store.target_sum must be a number"),
    (("filters", "assays"), "10x", r"params.filters.assays must be a list"),
    (("registry", "champion"), "mlp", r"params.registry.champion must be one of best, sctab"),
    (("tune", "in_dag"), "yes", r"params.tune.in_dag must be true or false"),
])
def test_a_bad_key_names_its_path(path, value, message):
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        build_params(raw, "params")


def test_a_missing_section_and_a_non_mapping_are_errors():
    raw = yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text())
    with pytest.raises(ConfigError, match="'store' is missing"):
        build_params({k: v for k, v in raw.items() if k != "store"})
    broken = copy.deepcopy(raw)
    broken["train"] = [1, 2]
    with pytest.raises(ConfigError, match="params.train must be a mapping"):
        build_params(broken)


def test_defaults_are_the_papers_where_it_gives_them():
    d = defaults_of(NeuralModelParams)
    assert d["batch_size"] == 2048 and d["lr_gamma"] == 0.9
    p = build_params({k: v for k, v in yaml.safe_load((PROFILES_DIR / "tiny.yaml").read_text()).items()
                      if k in ("profile", "census", "ontology", "filters", "split", "store")})
    assert p.models.linear.lr == 0.0005 and p.models.linear.weight_decay == 0.01   # paper
    assert p.models.mlp.lr == 0.002 and p.models.sctab.lr == 0.005                 # paper
    f = defaults_of(FiltersParams)
    assert f["min_cells_per_type"] == 5000 and f["min_donors_per_type"] == 30 and f["min_ancestors"] == 7   # paper
    assert p.ensemble.seeds == [0, 1, 2, 3, 4] and p.pca.n_components == 256              # paper
