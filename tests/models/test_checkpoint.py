"""Import of published-style scTab checkpoints (Lightning layout, hparams.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from sctab.models import TabNet, load_published_sctab, save_published_style_checkpoint
from sctab.models.published import CheckpointError, read_hparams_yaml

pytestmark = pytest.mark.usefixtures("torch_one_thread")


HP = dict(
    gene_dim=50, type_dim=7, n_d=8, n_a=4, n_steps=1, gamma=1.3, n_independent=2,
    n_shared=2, epsilon=1e-15, virtual_batch_size=16, momentum=0.02, mask_type="entmax",
    lambda_sparse=1e-5, learning_rate=0.005, batch_size=64,
)


def _arch(hp):
    return dict(
        input_dim=hp["gene_dim"], output_dim=hp["type_dim"], n_d=hp["n_d"], n_a=hp["n_a"],
        n_steps=hp["n_steps"], n_independent=hp["n_independent"], n_shared=hp["n_shared"],
        virtual_batch_size=hp["virtual_batch_size"], momentum=hp["momentum"],
    )


def _trained_model(hp=HP, seed=0):
    torch.manual_seed(seed)
    model = TabNet(**_arch(hp))
    model.train()
    for i in range(3):  # move the BN running statistics away from their init
        model(torch.log1p(torch.rand(64, hp["gene_dim"]) * (i + 1) * 5))
    return model.eval()


def _x(genes=50):
    return torch.log1p(torch.rand(40, genes, generator=torch.Generator().manual_seed(9)) * 10)


def test_roundtrip_gives_identical_outputs(tmp_path):
    model = _trained_model()
    assert model.encoder.initial_bn.num_batches_tracked.item() == 3
    path = save_published_style_checkpoint(model, HP, tmp_path / "run" / "checkpoints" / "last.ckpt")
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("classifier.") for k in raw["state_dict"])
    assert (tmp_path / "run" / "checkpoints" / "hparams.yaml").is_file()

    loaded = load_published_sctab(path)  # finds hparams.yaml next to the ckpt
    assert not loaded.training
    x = _x()
    with torch.no_grad():
        a, la = model(x)
        b, lb = loaded(x)
    assert torch.equal(a, b) and torch.equal(la, lb)
    # shared tensor is shared again after loading, not duplicated
    enc = loaded.encoder
    shared = enc.initial_splitter.shared.shared_layers[0].weight
    assert enc.feat_transformers[0].shared.glu_layers[0].fc.weight is shared
    assert loaded.lambda_sparse == HP["lambda_sparse"]


def test_hparams_found_one_folder_up_and_extras_kept(tmp_path):
    model = _trained_model()
    ckpt = tmp_path / "version_0" / "checkpoints" / "val_f1_macro=0.9.ckpt"
    extras = {"child_lookup": torch.eye(7, dtype=torch.int64), "class_weights": torch.ones(7)}
    save_published_style_checkpoint(model, HP, ckpt, extras=extras)
    (ckpt.parent / "hparams.yaml").rename(tmp_path / "version_0" / "hparams.yaml")
    loaded = load_published_sctab(ckpt)
    assert torch.equal(loaded.checkpoint_extras["child_lookup"], torch.eye(7, dtype=torch.int64))


def test_lightning_hparams_yaml_with_python_tags(tmp_path):
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    text = yaml.safe_dump(HP) + (
        "optimizer: !!python/name:torch.optim.adamw.AdamW ''\n"
        "lr_scheduler: !!python/name:torch.optim.lr_scheduler.StepLR ''\n"
        "lr_scheduler_kwargs:\n  step_size: 1\n  gamma: 0.9\n"
        "weird: !!python/object/apply:os.system ['echo should-not-run']\n"
    )
    hp_file = tmp_path / "lightning_hparams.yaml"
    hp_file.write_text(text)
    hp = read_hparams_yaml(hp_file)
    assert hp["optimizer"] == "torch.optim.adamw.AdamW"
    assert hp["lr_scheduler_kwargs"] == {"step_size": 1, "gamma": 0.9}
    assert hp["weird"] == ["echo should-not-run"]  # plain data, nothing executed
    loaded = load_published_sctab(ckpt, hparams_path=hp_file)
    with torch.no_grad():
        assert torch.equal(loaded(_x())[0], model(_x())[0])


def test_gene_dim_mismatch_names_file_and_shape(tmp_path):
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    bad = tmp_path / "bad_hparams.yaml"
    bad.write_text(yaml.safe_dump({**HP, "gene_dim": 60}))
    with pytest.raises(CheckpointError) as err:
        load_published_sctab(ckpt, hparams_path=bad)
    msg = str(err.value)
    assert str(ckpt) in msg and str(bad) in msg
    assert "classifier.encoder.initial_bn.weight: checkpoint [50] vs model [60]" in msg
    assert "[24, 50] vs model [24, 60]" in msg  # the shared first layer


def test_missing_and_unexpected_keys_are_named(tmp_path):
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    raw = torch.load(ckpt, weights_only=True)
    del raw["state_dict"]["classifier.final_mapping.weight"]
    raw["state_dict"]["classifier.encoder.extra.weight"] = torch.zeros(2)
    torch.save(raw, ckpt)
    with pytest.raises(CheckpointError) as err:
        load_published_sctab(ckpt)
    msg = str(err.value)
    assert "missing keys: classifier.final_mapping.weight" in msg
    assert "unexpected keys: classifier.encoder.extra.weight" in msg
    assert str(ckpt) in msg


def test_lightning_style_pickled_references_load_without_running_code(tmp_path):
    """Real Lightning ckpts pickle class references (optimizer) in hyper_parameters."""
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    raw = torch.load(ckpt, weights_only=True)
    raw["hyper_parameters"]["optimizer"] = torch.optim.AdamW
    raw["hyper_parameters"]["lr_scheduler"] = torch.optim.lr_scheduler.StepLR
    raw["hyper_parameters"]["root"] = Path("/data/merlin")
    torch.save(raw, ckpt)
    with pytest.raises(Exception):
        torch.load(ckpt, weights_only=True)  # plain weights-only load refuses it
    loaded = load_published_sctab(ckpt)
    with torch.no_grad():
        assert torch.equal(loaded(_x())[0], model(_x())[0])
    with pytest.raises(CheckpointError, match="needs pickled Python objects.*torch.optim.adamw.AdamW"):
        load_published_sctab(ckpt, stub_globals=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_is_refused(tmp_path):
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    raw = torch.load(ckpt, weights_only=True)
    raw["payload"] = _Evil()
    torch.save(raw, ckpt)
    with pytest.raises(CheckpointError, match="refusing"):
        load_published_sctab(ckpt)


def test_missing_hparams_are_reported(tmp_path):
    model = _trained_model()
    ckpt = save_published_style_checkpoint(model, HP, tmp_path / "m.ckpt")
    hp = tmp_path / "hparams.yaml"
    hp.write_text(yaml.safe_dump({"n_d": 8}))
    with pytest.raises(CheckpointError, match=r"missing required hparams \['gene_dim', 'type_dim'\]"):
        load_published_sctab(ckpt)
    with pytest.raises(FileNotFoundError):
        load_published_sctab(tmp_path / "nope.ckpt")
