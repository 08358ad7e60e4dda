"""sctab.data: the donor-wise split, the training store (published scTab parquet layout) and its loaders,
the augmentation vectors and the PCA embedding of the XGBoost baseline.

    split = split_cells(obs, params)                  # train/val/test by donor, nested train subsets
    write_store(params, obs, var, assignment, subsets, ontology, "data/store", read_counts)
    store = Store("data/store")                      # reads the published layout too
    loader = make_loader(store, "train", batch_size=2048, backend="sparse")

Names are imported on first use, so that ``import sctab.data.split`` does not load torch or scikit-learn.
"""


from sctab.lazy import lazy_namespace

_LAZY = {
    "SPLITS": "sctab.data.split", "Split": "sctab.data.split", "SplitError": "sctab.data.split",
    "split_cells": "sctab.data.split",
    "normalize_log1p": "sctab.data.normalize",
    "Store": "sctab.data.store", "StoreError": "sctab.data.store", "balanced_class_weights": "sctab.data.store",
    "write_sparse_layout": "sctab.data.store_writer", "write_store": "sctab.data.store_writer",
    "label_rows": "sctab.data.subsets", "train_rows": "sctab.data.subsets",
    "Batch": "sctab.data.loaders", "LoaderError": "sctab.data.loaders", "make_loader": "sctab.data.loaders",
    "AugmentError": "sctab.data.augment", "Augmenter": "sctab.data.augment",
    "compute_augmentations": "sctab.data.augment", "load_augmentations": "sctab.data.augment",
    "write_augmentations": "sctab.data.augment",
    "PCAError": "sctab.data.pca", "PCAModel": "sctab.data.pca", "load_embedding": "sctab.data.pca",
    "write_pca": "sctab.data.pca",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_namespace(__name__, _LAZY)
