"""Read the Cell Ontology bundled with cellxgene-ontology-guide (no network).

The package ships each ontology release as zstd-compressed JSON: one entry per term with its
label, synonyms, deprecation flag and *all* ancestors with their distance (1 = direct parent).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import zstandard

ROOT_CELL = "CL:0000000"
NATIVE_CELL = "CL:0000003"


def bundled_cl_versions() -> list[str]:
    """Versions of CL shipped by the installed cellxgene-ontology-guide, oldest first."""
    data = resources.files("cellxgene_ontology_guide") / "data"
    names = [p.name for p in data.iterdir() if p.name.startswith("CL-ontology-") and p.name.endswith(".json.zst")]
    return sorted(n[len("CL-ontology-") : -len(".json.zst")] for n in names)


def bundled_cl_path(version: str) -> Path:
    """Path of one bundled CL release; a clear error lists the available ones."""
    data = resources.files("cellxgene_ontology_guide") / "data"
    path = Path(str(data / f"CL-ontology-{version}.json.zst"))
    if not path.exists():
        raise FileNotFoundError(
            f"Cell Ontology version {version!r} is not bundled with cellxgene-ontology-guide; "
            f"available: {', '.join(bundled_cl_versions())} (set ontology.cl_version in params.yaml)"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_bundled_cl(version: str) -> dict[str, dict]:
    """Term id -> {label, synonyms, deprecated, ancestors: {id: distance}} for one CL release."""
    with open(bundled_cl_path(version), "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    return json.loads(raw)
