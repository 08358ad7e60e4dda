"""The MLflow registry: register (lineage, @challenger, no duplicates, nothing half-registered), promote
(only if at least as good on the same test split, unless forced), the pyfunc itself, import-checkpoint."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from sctab.cli import main as cli
from sctab.data.store import Store
from sctab.registry import RegistryError, promote, register_folder
from sctab.registry.register import client, store_class_ids
from tests.model_folders import SMALL_SCTAB, write_model_folders


@pytest.fixture(scope="module")
def folders(store_dir, tmp_path_factory):
    return write_model_folders(tmp_path_factory.mktemp("reg-models"), store_dir, linear_seeds=(0, 5, 7))


def _register(folder, name, store_dir, ontology, f1, params=None, **kw):
    return register_folder(folder, name, class_ids=store_class_ids(store_dir), ontology=ontology,
                           params=params or {"profile": "test"}, test_f1=f1, **kw)


def _counts(store_dir, n=30):
    """Integer counts over the model's genes, as a request body would carry them."""
    genes = Store(store_dir).var["feature_id"].astype(str).tolist()
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.poisson(2.0, size=(n, len(genes))), columns=genes)


def test_register_ensemble_lineage_alias_and_pyfunc(folders, store_dir, ontology, tracking):
    v = _register(folders / "sctab", "sctab-ensemble", store_dir, ontology, 0.81)
    assert (v.version, v.reused) == ("1", False)
    c = client()
    mv = c.get_model_version_by_alias("sctab-ensemble", "challenger")
    assert str(mv.version) == "1"
    tags = mv.tags
    for key in ("git_commit", "data_version", "profile", "test_split", "bundle_md5", "run_id"):
        assert tags[key], key
    assert tags["test_f1_macro"] == "0.810000" and tags["member_runs"] == "run0,run1"
    assert tags["model_kind"] == "sctab-ensemble" and tags["members"] == "2"
    again = _register(folders / "sctab", "sctab-ensemble", store_dir, ontology, 0.81)
    assert again.reused and again.version == "1"
    assert len(c.search_model_versions("name = 'sctab-ensemble'")) == 1

    model = mlflow.pyfunc.load_model("models:/sctab-ensemble@challenger")
    # no input schema: the pyfunc checks requests itself (MLflow's check drops unknown columns silently)
    assert model.metadata.get_input_schema() is None
    counts = _counts(store_dir)
    served = model.predict(counts)
    assert list(served.columns) == ["label", "cell_type_ontology_term_id", "probability", "uncertainty",
                                    "coarse_label", "coarse_ontology_term_id"]
    # the same answer as annotating the same counts as an AnnData
    import anndata

    from sctab.annotation import annotate

    adata = anndata.AnnData(counts.to_numpy(dtype=np.float32), var=pd.DataFrame(index=counts.columns))
    ref = annotate(adata, "models:/sctab-ensemble@challenger", progress=False).obs
    assert (served["label"].to_numpy() == ref["sctab_label"].to_numpy()).all()
    np.testing.assert_allclose(served["probability"], ref["sctab_probability"], atol=1e-6)
    # a request with a subset of genes is zero-filled, a request of floats is refused
    part = model.predict(counts.iloc[:, ::2])
    assert len(part) == len(counts)
    with pytest.raises(MlflowException, match="not whole numbers") as e:
        model.predict(counts.astype(float) + 0.5)
    assert e.value.get_http_status_code() == 400
    # every problem of a request named at once: unknown columns (a few + count), bad values, cells
    bad = counts.iloc[:4].copy()
    bad.iloc[1, 0] = -3
    bad = bad.assign(**{f"gene_{i}": 1 for i in range(7)})
    with pytest.raises(MlflowException) as e:
        model.predict(bad)
    msg = e.value.message
    assert e.value.error_code == "INVALID_PARAMETER_VALUE" and msg.startswith(f"request of 4 cells x {bad.shape[1]} ")
    assert "not genes of this model: 7 (gene_0, gene_1, gene_2, gene_3, gene_4, ...)" in msg
    assert f"negative values: 1 ({counts.columns[0]}), in 1 of the 4 cells" in msg
    assert "Traceback" not in msg and "/" not in msg


def test_promote_rules(folders, store_dir, ontology, tracking, capsys):
    _register(folders / "linear", "lin", store_dir, ontology, 0.70)
    assert cli(["promote", "--model", "lin"]) == 0
    assert "no champion yet" in capsys.readouterr().out
    worse = _register(folders / "linear2", "lin", store_dir, ontology, 0.65)
    assert str(client().get_model_version_by_alias("lin", "challenger").version) == worse.version == "2"
    assert cli(["promote", "--model", "lin"]) == 1
    out = capsys.readouterr().out
    assert "not promoted" in out and "0.6500" in out and "below the champion's 0.7000" in out
    assert str(client().get_model_version_by_alias("lin", "champion").version) == "1"
    assert cli(["promote", "--model", "lin", "--force"]) == 0
    assert "forced" in capsys.readouterr().out
    champ = client().get_model_version_by_alias("lin", "champion")
    assert str(champ.version) == "2" and "below" in champ.tags["promoted_forced"]
    # a better version scored on another test split is not comparable
    other = _register(folders / "linear3", "lin", store_dir, ontology, 0.99,
                      extra_tags={"test_split": "data/store@other:test"})
    p = promote("lin", other.version)
    assert not p.promoted and "different test splits" in p.reason
    assert cli(["promote", "--model", "nope"]) == 2
    assert "no registered model 'nope'" in capsys.readouterr().err


def test_failed_registration_leaves_no_version(folders, store_dir, ontology, tracking):
    with pytest.raises(RegistryError, match="was removed again"):
        _register(folders / "linear", "broken", store_dir, ontology, 0.5, alias="v1")  # 'v1' is reserved
    assert client().search_model_versions("name = 'broken'") == []


def test_import_checkpoint_registers_an_ensemble(store_dir, ontology, obo_file, tracking, tmp_path, capsys):
    import torch

    from sctab.models import build_model
    from sctab.models.published import save_published_style_checkpoint

    store = Store(store_dir)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("sctab", store.n_genes, store.n_classes, **SMALL_SCTAB)
        hp = {"gene_dim": store.n_genes, "type_dim": store.n_classes, **SMALL_SCTAB, "n_steps": 1, "gamma": 1.3,
              "mask_type": "entmax", "lambda_sparse": 1e-5}
        ckpts.append(save_published_style_checkpoint(model, hp, tmp_path / f"seed{seed}" / "last.ckpt"))
    store.var[["feature_id", "feature_name"]].to_parquet(tmp_path / "var.parquet")
    store.lookup("cell_type")[["label"]].to_parquet(tmp_path / "cell_type.parquet")
    args = ["import-checkpoint", *map(str, ckpts), "--var", str(tmp_path / "var.parquet"), "--cell-types",
            str(tmp_path / "cell_type.parquet"), "--ontology", str(obo_file), "--store", str(store_dir),
            "--name", "imported"]
    assert cli(args) == 0, capsys.readouterr().err
    assert "imported version 1 from 2 checkpoint(s)" in capsys.readouterr().out
    mv = client().get_model_version_by_alias("imported", "challenger")
    assert 0.0 <= float(mv.tags["test_f1_macro"]) <= 1.0 and mv.tags["members"] == "2"
    assert "last.ckpt" in mv.tags["imported_checkpoints"]
    served = mlflow.pyfunc.load_model("models:/imported/1").predict(_counts(store_dir, 5))
    assert served["cell_type_ontology_term_id"].str.startswith("CL:").all()
    bad = args[:1] + [str(tmp_path / "missing.ckpt")] + args[3:]
    assert cli(bad) == 2
    assert "not found" in capsys.readouterr().err
