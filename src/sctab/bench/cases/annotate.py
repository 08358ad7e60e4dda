"""The `sctab annotate` row: a 100k-cell .h5ad through the 5-member ensemble, against the same command with
the reference model, checked on its first 2,048 cells.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import numpy as np
import torch

from sctab.bench.cases.registry import Rates, register
from sctab.bench.checks import bounded
from sctab.bench.exactness import exactness, label_mismatches, one_thread, tie_bound
from sctab.bench.fixtures import Config, annotate_inputs, annotate_root, in_spawned_process
from sctab.bench.roofline import count_work
from sctab.models.reference_tabnet import ReferenceTabNet


@contextlib.contextmanager
def reference_members(ann):
    """The annotator's members swapped for the reference TabNet with their weights (restored on exit)."""
    fast = [m.module for m in ann.bundle.classifier.members]
    for m in ann.bundle.classifier.members:
        m.module = ReferenceTabNet.like(m.module)
    try:
        yield ann
    finally:
        for m, module in zip(ann.bundle.classifier.members, fast):
            m.module = module


def _annotate_exactness(ann, h5ad: Path, written: Path, n: int) -> dict:
    """exactness() of the ensemble on the file's first n cells, through the annotator's own block path
    (gene matching, normalisation, members' mean), and the written labels equal to the fast path's."""
    import anndata

    from sctab.data.normalize import normalize_log1p

    counts = anndata.read_h5ad(h5ad, backed="r")[:n].to_memory().X  # the bundle's genes, in its order
    members = [m.module for m in ann.bundle.classifier.members]
    probs = {}
    with one_thread():  # see one_thread(): the check does not move with the machine's load
        probs[True] = torch.from_numpy(ann.predict_block(counts)[0])
        with reference_members(ann):
            probs[False] = torch.from_numpy(ann.predict_block(counts)[0])
        x = torch.from_numpy(normalize_log1p(counts, ann.bundle.target_sum))
        with torch.no_grad():
            p64 = torch.stack([torch.softmax(ReferenceTabNet.like(m).double()(x.double())[0], -1)
                               for m in members]).mean(0)
    res = exactness([probs[True]], [probs[False]], [p64])
    labels = np.asarray(ann.bundle.space.classes, dtype=object)[probs[True].argmax(1).numpy()]
    written_labels = anndata.read_h5ad(written, backed="r").obs["sctab_label"].to_numpy()[:n]
    # the file was written in blocks of another size (other float rounding): ties within rounding may go
    # either way there too
    bound = tie_bound(res["info"]["reference f32 vs f64"])
    differ, _ = label_mismatches(written_labels, labels, p64.numpy(), bound)
    res["check"]["written labels other than the fast path's (ties aside)"] = bounded(differ, 0)
    return res


def annotate_e2e(part: str, cfg: Config) -> dict:
    """`sctab annotate` (h5ad -> h5ad) with the 5 trained members. Ours: the fast TabNet path over every cell;
    baseline: the same command with the reference model (sort entmax), on the first annotate_baseline_cells.
    Ours is checked on the first 2,048 cells against the reference ensemble and a float64 one."""
    import anndata

    from sctab.annotation import annotate_file, load_annotator

    # build the inputs (once, cached) in another process, so their memory is not this part's peak RSS
    in_spawned_process(annotate_inputs, cfg, cfg.annotate_cells)
    h5ad, bundle = annotate_inputs(cfg, cfg.annotate_cells)
    ann = load_annotator(bundle, device="cpu")
    fast = part == "ours"
    src = h5ad
    if not fast:  # the reference model is ~6x slower: time it on a slice
        src = Path(cfg.cache) / f"annotate-baseline-{annotate_root(cfg, cfg.annotate_cells).name}-" \
                                f"{cfg.annotate_baseline_cells}.h5ad"
        if not src.exists():
            anndata.read_h5ad(h5ad, backed="r")[: cfg.annotate_baseline_cells].to_memory().write_h5ad(src)
    rates = Rates()
    out = Path(cfg.cache) / f"annotated-{part}.h5ad"
    n = None
    with contextlib.nullcontext() if fast else reference_members(ann):
        for _ in range(cfg.annotate_repeats):
            rates.start()
            report = annotate_file(src, out, ann, batch_size=cfg.batch_size, progress=False)
            rates.stop(report.n_cells)
            n = report.n_cells
        # the row's peak RSS is the annotation's: read before the check, whose float64 copies of the five
        # members and of a 2,048-cell batch (reference model: dense BN, full sort) take more than the annotation
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        res = _annotate_exactness(ann, h5ad, out, min(2048, n)) if fast else {"check": {}, "info": {}}
        out.unlink(missing_ok=True)
        work = _annotate_work(cfg, ann, h5ad, out, min(2048, n))  # of the members this part timed
    if fast:
        res["info"]["peak RSS with the check"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    label = (f"fast TabNet path, {n:,} cells" if fast else f"reference TabNet (sort entmax), {n:,} cells")
    return rates.result(unit="cells/s", label=label, check=res["check"], info=res["info"], peak_rss_mib=peak,
                        work=work)


def _annotate_work(cfg: Config, ann, h5ad: Path, out: Path, n: int) -> dict:
    """The torch work per cell of `sctab annotate` on the file's first n cells (every member's forward; reading
    and normalising the file in numpy/scipy is not counted)."""
    import anndata

    from sctab.annotation import annotate_file

    head = Path(cfg.cache) / f"annotate-work-{annotate_root(cfg, cfg.annotate_cells).name}-{n}.h5ad"
    if not head.exists():
        anndata.read_h5ad(h5ad, backed="r")[:n].to_memory().write_h5ad(head)
    work = count_work(lambda: annotate_file(head, out, ann, batch_size=cfg.batch_size, progress=False), n)
    out.unlink(missing_ok=True)
    return {**work, "what": f"torch ops of {len(ann.bundle.classifier.members)} members on {n:,} cells (file I/O and "
                            "normalisation in numpy not counted)"}


register("annotate_e2e", "`sctab annotate` end to end, 100k cells, 5-member ensemble, < 4 GiB", 1_400,
         annotate_e2e, baseline="same command, reference model", max_rss_mib=4096)
