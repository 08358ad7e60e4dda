"""The "merlin" loader backend: the reference's loader (merlin-dataloader), kept to compare against.

It lives apart because it needs its own environment (optional extra ``sctab[merlin]``, ``make merlin-env``:
merlin-dataloader cannot share the main venv) and follows merlin's order rather than our plan.
"""

from __future__ import annotations

from typing import Iterator

import torch

from sctab.data.batching import Batch, Loader, LoaderError


class MerlinNotInstalled(LoaderError, ImportError):
    """The merlin backend was asked for in an environment without merlin-dataloader."""


class MerlinLoader(Loader):
    """merlin-dataloader's torch Loader over the split's parquet files, its outputs converted to Batch.

    Without shuffle it reads the files in order, which gives the same batches as "stream"; with shuffle
    it uses merlin's own order (same rows per epoch, different batches; merlin shuffles with numpy's global
    RNG, which it reseeds from `seed_fn`). It shards by contiguous partitions, not by our plan. `rows`
    subsets are not supported. CPU merlin is slow (about 120 cells/s at 19,331 genes, per the reference
    notes): it is here to compare against, not to train with.
    """

    def __init__(self, store, split, **kw):
        super().__init__(store, split, **kw)
        if self.rows is not None:
            raise LoaderError("the merlin backend does not support `rows` subsets; use 'stream' or 'memory'")
        try:
            import merlin.io  # noqa: F401
            from merlin.dataloader.torch import Loader as _MerlinTorchLoader  # noqa: F401
        except ImportError as e:
            raise MerlinNotInstalled(
                f"the merlin backend needs merlin-dataloader ({e}); it cannot live in the main environment: "
                "run `make merlin-env` (creates .venv-merlin with `sctab[merlin]` pins) and use that venv"
            ) from e
        self.n_classes = store.n_classes

    def _merlin_loader(self):
        import merlin.io
        from merlin.dataloader.torch import Loader as MerlinTorchLoader

        cols = ["X", "cell_type", *[c for c in self.columns if c != "cell_type"]]
        ds = merlin.io.Dataset([str(f) for f in self.split.files], engine="parquet")
        ds.schema = ds.schema.select_by_name(cols)  # the loader reads the schema's columns only
        epoch, seed = self.epoch, self.seed
        return MerlinTorchLoader(ds, batch_size=self.batch_size, shuffle=self.shuffle,
                                 seed_fn=lambda: seed * 100_003 + epoch, global_size=self.world_size,
                                 global_rank=self.rank, drop_last=self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        g = self.n_genes
        # `with`: merlin's loading thread is stopped and joined however the iteration ends; left running after
        # an epoch abandoned early (a bench reads 4 batches), the process died at exit ("terminate called
        # without an active exception")
        with self._merlin_loader() as merlin_loader:
            for feats, _ in merlin_loader:
                y = feats["cell_type"].reshape(-1).to(torch.int64).contiguous()
                if "X" in feats:  # a fixed-shape list column comes as one 2-d tensor
                    x = feats["X"]
                else:  # a ragged one as values + offsets
                    x, offsets = feats["X__values"], feats["X__offsets"]
                    if len(offsets) != len(y) + 1 or bool((offsets.diff() != g).any()):
                        raise LoaderError(f"split {self.split_name!r}: a row of X does not have {g} values")
                x = x.reshape(-1, g).to(torch.float32).contiguous()
                if ((y < 0) | (y >= self.n_classes)).any():
                    raise LoaderError(f"split {self.split_name!r}: cell_type code outside [0, {self.n_classes})")
                self._note(len(y))
                if self.x_format == "csr":
                    x = x.to_sparse_csr()
                yield Batch(x, y, {c: feats[c].reshape(-1).to(torch.int64).contiguous() for c in self.columns})

    def __len__(self) -> int:
        if self.world_size == 1:
            return super().__len__()
        return len(self._merlin_loader())
