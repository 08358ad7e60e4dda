"""Parameters: profiles under conf/profiles/, materialised into params.yaml (what DVC tracks).

A profile holds every number of the paper's Methods: `census-2023-05-15` has the paper's values,
`tiny` (the embedded default) scaled ones. Switching profile rewrites params.yaml; the code is the same.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import yaml

from sctab.params_schema import ConfigError, Params, build_params, section

# ruamel.yaml (round-trip YAML, a dvc dependency) is imported by update_params_file only: the `sctab` command
# imports this module at start-up and most commands never write params back.

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "conf" / "profiles"
REQUIRED_SECTIONS = ("profile", "census", "ontology", "filters", "split", "store")




#: where models run: ``auto`` = a GPU when one is there and torch can use it (sctab.models.device resolves it)
DEVICES = ("auto", "cpu", "cuda")
#: training arithmetic: float32 throughout, or bf16 autocast for the matmuls (entmax and losses in float32)
PRECISIONS = ("32", "bf16-mixed")


def check_device(value: Any, where: str = "device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, as a string; ConfigError naming ``where`` otherwise."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in DEVICES or (text is not None and text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ConfigError(f"{where} must be one of {', '.join(DEVICES)} (or cuda:N), got {value!r}")


def check_precision(value: Any, where: str = "precision") -> str:
    """``32`` (a number or a string) or ``bf16-mixed``, as a string; ConfigError naming ``where`` otherwise."""
    text = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text in PRECISIONS:
        return text
    raise ConfigError(f"{where} must be one of {', '.join(PRECISIONS)}, got {value!r}")


def check_settings(params: Params | dict[str, Any], source: str = "params") -> None:
    """The device and precision settings of a params file, checked before any stage starts (the schema checks
    their types; these their values)."""
    try:
        train, tune, experiments = (section(params, s) for s in ("train", "tune", "experiments"))
        section(params, "registry")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    check_device(train.device, f"{source}: train.device")
    check_precision(train.precision, f"{source}: train.precision")
    for name, v in (("tune", tune.gpus_per_trial), ("experiments", experiments.gpus_per_trial)):
        if v != "auto" and (isinstance(v, (bool, str)) or v < 0):
            raise ConfigError(f"{source}: {name}.gpus_per_trial must be auto or a number >= 0 (a fraction "
                              f"shares a GPU between trials), got {v!r}")


def available_profiles(profiles_dir: Path = PROFILES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))


def profile_path(name: str, profiles_dir: Path = PROFILES_DIR) -> Path:
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown profile {name!r}; available profiles: {', '.join(available_profiles(profiles_dir)) or 'none'} "
            f"(in {profiles_dir})"
        )
    return path


def load_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """Load a params file and check that the sections every stage needs are there."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"parameter file {path} does not exist (create it with `sctab params --profile tiny`)")
    with open(path) as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ConfigError(f"parameter file {path} is not a YAML mapping")
    missing = [s for s in REQUIRED_SECTIONS if s not in params]
    if missing:
        raise ConfigError(f"parameter file {path} lacks section(s): {', '.join(missing)}")
    typed = build_params(params, str(path))  # every key known and of its type (sctab.params_schema)
    check_settings(typed, str(path))
    return params


def load_typed_params(path: str | os.PathLike = "params.yaml") -> Params:
    """The params file as the typed :class:`sctab.params_schema.Params`."""
    return build_params(load_params(path), str(path))


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    params = load_params(profile_path(name, profiles_dir))
    if section(params, "profile") != name:
        raise ConfigError(f"profile file {name}.yaml declares profile {section(params, 'profile')!r}")
    return params


def update_params_file(path: str | os.PathLike, dotted: str, values: dict[str, Any]) -> dict[str, Any]:
    """Set ``values`` under the mapping at ``dotted`` (e.g. ``models.xgboost``; ``""`` = top level) of a params
    file, in place.

    Comments and layout survive (ruamel round trip), so a tuned config written back reads like the rest;
    returns the previous values of the keys that changed.
    """
    from ruamel.yaml import YAML

    path = Path(path)
    load_params(path)
    ry = YAML()
    ry.preserve_quotes = True
    ry.width = 4096
    doc = ry.load(path.read_text())
    node = doc
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path} has no section {dotted!r} to update")
        node = node[part]
    old = {k: node.get(k) for k in values if node.get(k) != values[k]}
    for k, v in values.items():
        node[k] = v
    buf = io.StringIO()
    ry.dump(doc, buf)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return old
