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

# ruamel.yaml (round-trip YAML, a dvc dependency) is imported by update_params_file only: the `sctab` command
# imports this module at start-up and most commands never write params back.

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "conf" / "profiles"
REQUIRED_SECTIONS = ("profile", "census", "ontology", "filters", "split", "store")


class ConfigError(ValueError):
    """A parameter file or profile is missing, unknown or malformed."""


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
    return params


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    params = load_params(profile_path(name, profiles_dir))
    if params.get("profile") != name:
        raise ConfigError(f"profile file {name}.yaml declares profile {params.get('profile')!r}")
    return params


def get(params: dict, dotted: str, default: Any = ...) -> Any:
    """`get(params, "filters.min_cells_per_type")` with an error naming the missing key."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(f"parameter {dotted!r} is missing (profile {params.get('profile')!r})")
        node = node[part]
    return node


def update_params_file(path: str | os.PathLike, dotted: str, values: dict[str, Any]) -> dict[str, Any]:
    """Set ``values`` under the mapping at ``dotted`` (e.g. ``models.xgboost``) of a params file, in place.

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
    for part in dotted.split("."):
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
