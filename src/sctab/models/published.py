"""Import published scTab checkpoints (Lightning ``.ckpt`` + ``hparams.yaml``) safely.

Safety: checkpoints are always read with ``torch.load(weights_only=True)``; no
code from the file is ever imported or run.  Lightning checkpoints also pickle
*references* to classes (e.g. ``torch.optim.adamw.AdamW`` in
``hyper_parameters``), which the weights-only unpickler refuses.  Those names
are listed without unpickling (``torch.serialization.get_unsafe_globals_in_checkpoint``)
and mapped to inert placeholder classes that only store their arguments, so the
tensors can still be read.  Files referencing clearly dangerous callables (os,
subprocess, builtins.eval, ...) are refused outright; pass
``stub_globals=False`` to refuse any file that needs pickled objects.

``hparams.yaml`` is read with a SafeLoader subclass that turns unknown tags
(``!!python/name:...``, ``!!python/object...``) into plain data.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
import yaml

from .tabnet import TabNet

__all__ = [
    "CheckpointError",
    "PublishedCheckpoint",
    "load_published_sctab",
    "read_published_checkpoint",
    "read_hparams_yaml",
    "save_published_style_checkpoint",
    "tabnet_kwargs_from_hparams",
    "PREFIX",
]

log = logging.getLogger(__name__)

#: Key prefix of the TabNet inside scTab's LightningModule.
PREFIX = "classifier."

# hparams.yaml key -> TabNet argument
_HPARAM_TO_ARG = {
    "gene_dim": "input_dim",
    "type_dim": "output_dim",
    "n_d": "n_d",
    "n_a": "n_a",
    "n_steps": "n_steps",
    "gamma": "gamma",
    "n_independent": "n_independent",
    "n_shared": "n_shared",
    "epsilon": "epsilon",
    "virtual_batch_size": "virtual_batch_size",
    "momentum": "momentum",
    "mask_type": "mask_type",
    "lambda_sparse": "lambda_sparse",
}
_REQUIRED_HPARAMS = ("gene_dim", "type_dim")

# Modules whose callables must never appear in a weights checkpoint.
_DANGEROUS_MODULES = (
    "builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "shutil",
    "importlib", "runpy", "pickle", "_pickle", "marshal", "types", "ctypes", "socket",
    "code", "codeop", "pty", "commands", "webbrowser", "eval", "exec",
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read safely or does not match the model."""


# --------------------------------------------------------------------------- #
# hparams.yaml
# --------------------------------------------------------------------------- #
class _TolerantSafeLoader(yaml.SafeLoader):
    """SafeLoader that turns unknown tags into data instead of objects.

    ``!!python/name:torch.optim.adamw.AdamW ''`` becomes the string
    ``"torch.optim.adamw.AdamW"``; other unknown tags become the plain
    scalar/list/dict under them.  Nothing is imported or constructed.
    """


def _construct_unknown(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if tag_suffix.startswith("name:") or tag_suffix.startswith("module:"):
            return tag_suffix.split(":", 1)[1]
        return value
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return None  # pragma: no cover - yaml has no other node kinds


_TolerantSafeLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_unknown)
_TolerantSafeLoader.add_multi_constructor("!", _construct_unknown)
_TolerantSafeLoader.add_constructor(
    None, lambda loader, node: _construct_unknown(loader, "", node)
)


def read_hparams_yaml(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a Lightning ``hparams.yaml`` without constructing Python objects."""
    path = Path(path)
    with open(path, "r", encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_TolerantSafeLoader)  # noqa: S506 - SafeLoader subclass
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a mapping in hparams.yaml, got {type(data).__name__}")
    return data


def tabnet_kwargs_from_hparams(hparams: Mapping[str, Any], source: str = "hparams") -> Dict[str, Any]:
    """Map scTab hparams (gene_dim, type_dim, n_d, ...) to :class:`TabNet` arguments."""
    missing = [k for k in _REQUIRED_HPARAMS if k not in hparams]
    if missing:
        raise CheckpointError(f"{source}: missing required hparams {missing}")
    kwargs = {arg: hparams[key] for key, arg in _HPARAM_TO_ARG.items() if key in hparams}
    for key in ("input_dim", "output_dim", "n_d", "n_a", "n_steps", "n_independent",
                "n_shared", "virtual_batch_size"):
        if key in kwargs:
            kwargs[key] = int(kwargs[key])
    for key in ("gamma", "epsilon", "momentum", "lambda_sparse"):
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    return kwargs


# --------------------------------------------------------------------------- #
# .ckpt reading
# --------------------------------------------------------------------------- #
class _InertGlobal:
    """Stand-in for a class/function referenced by a checkpoint; runs nothing."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any):  # NEWOBJ calls cls.__new__(cls, *args)
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert stand-in for {self.qualified_name}>"


def _make_stub(name: str) -> type:
    return type(f"Inert[{name}]", (_InertGlobal,), {"qualified_name": name})


def _torch_load(path: Path, map_location: Any, stub_globals: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as first_error:  # noqa: BLE001 - re-raised below with context
        if not isinstance(first_error, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: could not read checkpoint: {first_error}") from first_error
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001
            names = []
        needs = f"{path}: this file needs pickled Python objects ({', '.join(names) or 'unknown globals'})"
        if not stub_globals or not names:
            raise CheckpointError(
                f"{needs}; refusing to unpickle arbitrary code (weights_only=True is enforced)."
            ) from first_error
        bad = [n for n in names if n.split(".", 1)[0] in _DANGEROUS_MODULES]
        if bad:
            raise CheckpointError(
                f"{needs}; it references executable callables {bad}: refusing to load it."
            ) from first_error
        log.info("%s: replacing pickled globals %s with inert stand-ins", path, names)
        with torch.serialization.safe_globals([(_make_stub(n), n) for n in names]):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as second_error:  # noqa: BLE001
                raise CheckpointError(
                    f"{needs}; even with inert stand-ins the weights-only load failed: {second_error}"
                ) from second_error


@dataclass
class PublishedCheckpoint:
    """Contents of a scTab checkpoint relevant to inference."""

    path: Path
    state_dict: Dict[str, torch.Tensor]  # TabNet keys, ``classifier.`` stripped
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. child_lookup, class_weights
    hparams: Dict[str, Any] = field(default_factory=dict)
    hparams_path: Optional[Path] = None


def _find_hparams(ckpt_path: Path) -> Optional[Path]:
    """Lightning keeps ``hparams.yaml`` next to the ckpt or one level up (version_x/)."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        candidate = folder / "hparams.yaml"
        if candidate.is_file():
            return candidate
    return None


def read_published_checkpoint(ckpt_path: str | os.PathLike, hparams_path: str | os.PathLike | None = None,
                              map_location: Any = "cpu", stub_globals: bool = True) -> PublishedCheckpoint:
    """Read state dict (prefix stripped), extra buffers and hparams of a scTab checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _torch_load(path, map_location, stub_globals)
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no 'state_dict' entry (found {keys})")
    raw = obj["state_dict"]
    not_tensors = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: state_dict entries are not tensors: {not_tensors[:10]}")

    if any(k.startswith(PREFIX) for k in raw):
        state = {k[len(PREFIX):]: v for k, v in raw.items() if k.startswith(PREFIX)}
        extras = {k: v for k, v in raw.items() if not k.startswith(PREFIX)}
    else:  # a bare TabNet state dict
        state, extras = dict(raw), {}

    hp_path = Path(hparams_path) if hparams_path is not None else _find_hparams(path)
    if hp_path is not None:
        if not hp_path.is_file():
            raise FileNotFoundError(f"hparams file not found: {hp_path}")
        hparams = read_hparams_yaml(hp_path)
    else:
        embedded = obj.get("hyper_parameters")
        if not isinstance(embedded, Mapping):
            raise CheckpointError(
                f"{path}: no hparams.yaml next to the checkpoint and no 'hyper_parameters' "
                f"inside it; pass hparams_path="
            )
        hparams = dict(embedded)
    return PublishedCheckpoint(path, state, extras, hparams, hp_path)


def _mismatch_report(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [
        f"{PREFIX}{k}: checkpoint {list(got[k])} vs model {list(expected[k])}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(PREFIX + k for k in missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(PREFIX + k for k in unexpected))
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong))
    return problems


def load_published_sctab(ckpt_path: str | os.PathLike, hparams_path: str | os.PathLike | None = None,
                         map_location: Any = "cpu", stub_globals: bool = True) -> TabNet:
    """Build a :class:`TabNet` from a published scTab checkpoint, in eval mode.

    ``hparams_path`` defaults to ``hparams.yaml`` beside the checkpoint (or one
    folder up), then to the checkpoint's own ``hyper_parameters``.  The weights
    are loaded with ``strict=True``; any missing/unexpected key or shape
    mismatch raises :class:`CheckpointError` naming the keys and the files.
    Non-``classifier.`` buffers (class weights, child lookup) end up in
    ``model.checkpoint_extras``.
    """
    ckpt = read_published_checkpoint(ckpt_path, hparams_path, map_location, stub_globals)
    source = str(ckpt.hparams_path or ckpt.path)
    kwargs = tabnet_kwargs_from_hparams(ckpt.hparams, source=source)
    try:
        model = TabNet(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid TabNet hparams {kwargs}: {err}") from err
    problems = _mismatch_report(model, ckpt.state_dict)
    if problems:
        raise CheckpointError(
            f"{ckpt.path} does not match TabNet({_fmt(kwargs)}) built from {source}: "
            + " | ".join(problems)
        )
    model.load_state_dict(ckpt.state_dict, strict=True)
    model.checkpoint_extras = dict(ckpt.extras)
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()


def _fmt(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


# --------------------------------------------------------------------------- #
# writing (tests, exports)
# --------------------------------------------------------------------------- #
def _yaml_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def save_published_style_checkpoint(
    model: TabNet,
    hparams: Mapping[str, Any],
    path: str | os.PathLike,
    extras: Optional[Mapping[str, torch.Tensor]] = None,
    hparams_filename: str = "hparams.yaml",
) -> Path:
    """Write ``{"state_dict": {"classifier." + k: v}}`` like scTab's Lightning ckpt,
    plus ``hparams.yaml`` in the same folder.  ``gene_dim``/``type_dim`` default to
    the model's dimensions.  Returns the checkpoint path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hp = dict(hparams)
    hp.setdefault("gene_dim", int(model.input_dim))
    hp.setdefault("type_dim", int(model.output_dim))
    state = {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    for k, v in (extras or {}).items():
        state[k] = v.detach().cpu()
    hp_plain = _yaml_safe(hp)
    torch.save(
        {"state_dict": state, "hyper_parameters": hp_plain, "epoch": 0, "global_step": 0},
        path,
    )
    with open(path.parent / hparams_filename, "w", encoding="utf-8") as fh:
        yaml.safe_dump(hp_plain, fh, sort_keys=False)
    return path

