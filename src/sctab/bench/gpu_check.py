"""`make gpu-pack` here, `make gpu-check` there: the GPU suite and the device bench rows on a bare GPU machine.

The machine this is for has its own Python 3.12 with a CUDA torch, no network, and a limit on what one copy to it
may carry (64 MiB with the working tree). So the packages the GPU tests and the device rows need, and the image
lacks, travel as wheels, in parts:

* ``pack`` (here, where pip reaches a registry): resolves the requirement set for CPython 3.12 manylinux from
  the packages' metadata, downloads the wheels the device image lacks (``infra/gpu/device-image.txt``; torch, triton and
  the CUDA libraries always: the image's CUDA build must stay), and writes ``.whl/part-NN/`` folders of at most
  ``--part-mib`` each. A wheel larger than a part is cut into chunks across parts. ``.whl/manifest.json`` (a copy
  in every part) names each wheel with its size, SHA-256 and chunks.
* ``stage`` (there, once per copy): copies the chunks of the parts present in the tree into a folder that outlives
  the call (``/tmp/sctab-gpu``, kept while the machine stays warm) and says which parts are still missing.
* ``install`` (there): when every wheel is complete and its SHA-256 matches, installs them with
  ``pip --no-index --no-deps --target``; otherwise names what is missing and installs nothing.
* ``run`` (there): the GPU suite (``pytest -m gpu``), then the device bench rows, written under
  ``benchmarks/results/gpu-<date>/`` by the bench itself, and copied to ``$OUT`` when it is set.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STAGE = Path(os.environ.get("SCTAB_GPU_STAGE", "/tmp/sctab-gpu"))
#: what the GPU suite (tests/models/test_gpu.py and the fixtures it imports) and the device rows import besides torch
REQUIREMENTS = ["numpy>=1.26", "scipy>=1.11", "pandas>=2.0", "pyarrow>=15", "anndata>=0.10", "scikit-learn>=1.4",
                "tiledbsoma>=1.10", "cellxgene-ontology-guide>=1.0", "pronto>=2.5", "mlflow>=3.0,<4",
                "ray[default,train,tune]>=2.40", "optuna>=4", "xgboost>=2.0", "entmax>=1.3", "pyyaml>=6",
                "rich>=13", "tqdm>=4.66", "matplotlib>=3.8", "psutil>=5.9", "xxhash>=3", "pytest>=8",
                "pytest-timeout>=2.3", "hypothesis>=6.100"]
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # the image's CUDA build and its libraries stay
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(filename: str) -> str:
    return canonical(filename.split("-")[0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def device_image(path: Path) -> set[str]:
    """Project names the device image holds (one per line or space-separated; '#' starts a comment)."""
    names = set()
    for line in path.read_text().splitlines():
        names.update(canonical(n) for n in line.split("#")[0].split())
    return names


def plan_parts(wheels: list[tuple[str, int]], part_bytes: int) -> list[list[tuple[str, int, int]]]:
    """Wheels (name, size) -> parts, each a list of (name, offset, length) at most part_bytes long in all.

    Largest first, each into the first part with room (first-fit decreasing); a wheel larger than a part is cut
    into part-sized chunks, each in a part of its own."""
    if part_bytes <= 0:
        raise ValueError("the part size must be positive")
    parts: list[list[tuple[str, int, int]]] = []
    room: list[int] = []
    for name, size in sorted(wheels, key=lambda w: (-w[1], w[0])):
        if size > part_bytes:
            for off in range(0, size, part_bytes):
                n = min(part_bytes, size - off)
                parts.append([(name, off, n)])
                room.append(part_bytes - n)
            continue
        for i, r in enumerate(room):
            if r >= size:
                parts[i].append((name, 0, size))
                room[i] -= size
                break
        else:
            parts.append([(name, 0, size)])
            room.append(part_bytes - size)
    return parts


def _target_args() -> list[str]:
    """pip's options for wheels that install on the GPU machine's CPython 3.12 (x86-64 manylinux)."""
    return ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[a for p in PLATFORMS for a in ("--platform", p)]]


def _pip(pip: list[str], args: list[str]) -> subprocess.CompletedProcess:
    r = subprocess.run([*pip, *args], capture_output=True, text=True)
    if r.returncode != 0:
        tail = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")][-1:]
        raise SystemExit(f"pip {args[0]} failed (exit {r.returncode}): {(tail or ['no output'])[0]}")
    return r


def resolve(requirements: list[str], pip: list[str]) -> dict[str, str]:
    """{project: version} of the requirement set with its dependencies for CPython 3.12, resolved from the
    packages' metadata (``pip install --dry-run --report``: no wheel is downloaded whole)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "report.json"
        _pip(pip, ["install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
                   *_target_args(), "--target", str(Path(d) / "t"), *requirements])
        items = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def pack(out: Path, part_mib: float, requirements: list[str], image: set[str], pip: list[str],
         download: Path | None = None) -> dict:
    """Download (unless ``download`` already holds the wheels), drop the image's packages, write the parts."""
    cache = download or out / "download"
    if download is None:
        cache.mkdir(parents=True, exist_ok=True)
        pins = [f"{name}=={version}" for name, version in resolve(requirements, pip).items()
                if not (NEVER.match(name) or name in image)]  # never fetched: torch's CUDA wheels are gigabytes
        _pip(pip, ["download", "--quiet", "--no-deps", *_target_args(), "--dest", str(cache), *pins])
    wheels = sorted(p for p in cache.glob("*.whl"))
    keep = [w for w in wheels if not (NEVER.match(wheel_project(w.name)) or wheel_project(w.name) in image)]
    part_bytes = int(part_mib * 2 ** 20)
    layout = plan_parts([(w.name, w.stat().st_size) for w in keep], part_bytes)
    for old in out.glob("part-*"):
        shutil.rmtree(old)
    manifest = {"wheels": {w.name: {"size": w.stat().st_size, "sha256": sha256(w), "chunks": []} for w in keep},
                "parts": len(layout), "part_mib": part_mib,
                "dropped (on the device image)": sorted(w.name for w in wheels if w not in keep)}
    src = {w.name: w for w in keep}
    for i, chunks in enumerate(layout, 1):
        d = out / f"part-{i:02d}"
        d.mkdir(parents=True)
        for name, off, n in chunks:
            with open(src[name], "rb") as f:
                f.seek(off)
                (d / f"{name}.{off:012d}").write_bytes(f.read(n))
            manifest["wheels"][name]["chunks"].append({"part": i, "offset": off, "length": n})
    text = json.dumps(manifest, indent=1)
    (out / "manifest.json").write_text(text)
    for i in range(1, len(layout) + 1):
        (out / f"part-{i:02d}" / "manifest.json").write_text(text)
    return manifest


def stage(src: Path, stage_dir: Path) -> dict:
    """Copy the chunks of every part under ``src`` into ``stage_dir``; what is there and what is missing."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = None
    for part in sorted(src.glob("part-*")):
        m = part / "manifest.json"
        if m.exists():
            manifest = json.loads(m.read_text())
            (stage_dir / "manifest.json").write_text(m.read_text())
        for chunk in part.glob("*.whl.*"):
            shutil.copyfile(chunk, stage_dir / chunk.name)
    if manifest is None:
        if not (stage_dir / "manifest.json").exists():
            raise SystemExit(f"no part with a manifest.json under {src} and none staged in {stage_dir}: "
                             "copy a .whl/part-NN folder made by `make gpu-pack`")
        manifest = json.loads((stage_dir / "manifest.json").read_text())
    return status(manifest, stage_dir)


def status(manifest: dict, stage_dir: Path) -> dict:
    missing_parts = set()
    complete = []
    for name, w in manifest["wheels"].items():
        absent = [c["part"] for c in w["chunks"] if not (stage_dir / f"{name}.{c['offset']:012d}").exists()]
        missing_parts.update(absent)
        if not absent:
            complete.append(name)
    return {"wheels": len(manifest["wheels"]), "complete": len(complete), "missing_parts": sorted(missing_parts),
            "parts": manifest["parts"]}


def install(stage_dir: Path, target: Path, python: str) -> int:
    """Join, verify and install every staged wheel; nothing is installed unless all are complete and intact."""
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    st = status(manifest, stage_dir)
    if st["missing_parts"]:
        print(f"not installing: parts {st['missing_parts']} of {st['parts']} not staged yet", file=sys.stderr)
        return 2
    joined = stage_dir / "wheels"
    joined.mkdir(exist_ok=True)
    bad = []
    for name, w in manifest["wheels"].items():
        out = joined / name
        with open(out, "wb") as f:
            for c in sorted(w["chunks"], key=lambda c: c["offset"]):
                f.write((stage_dir / f"{name}.{c['offset']:012d}").read_bytes())
        if out.stat().st_size != w["size"] or sha256(out) != w["sha256"]:
            bad.append(name)
    if bad:
        print(f"not installing: {bad} do not match their SHA-256 (copy those parts again)", file=sys.stderr)
        return 2
    r = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(target), *sorted(str(p) for p in joined.glob("*.whl"))])
    if r.returncode == 0:
        (target / ".sctab-installed").write_text(json.dumps(sorted(manifest["wheels"])))
    return r.returncode


def run(results: Path, site: Path | None, device: str, quick: bool, python: str) -> int:
    """The GPU suite, then the device bench rows; logs and tables under ``results`` (and $OUT)."""
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    paths = [str(REPO / "src"), str(REPO)] + ([str(site)] if site else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    smi = shutil.which("nvidia-smi")
    if smi:
        (results / "nvidia.txt").write_text(subprocess.run([smi], capture_output=True, text=True).stdout)
    with open(results / "gpu-tests.log", "w") as log:
        tests = subprocess.run([python, "-m", "pytest", "-m", "gpu", "-rs", "-v", "-p", "no:cacheprovider",
                                "tests/models/test_gpu.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    rows = ["device_loader", "device_train_step", "device_train_step_bf16", "device_inference", "device_annotate",
            "device_train_e2e"]
    bench = [python, "benchmarks/run.py", "--device", device, "--cases", *rows,
             "--out", str(results / "gpu-bench-rows.md"), *(["--quick"] if quick else [])]
    with open(results / "gpu-bench.log", "w") as log:
        b = subprocess.run(bench, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    out = os.environ.get("OUT")
    if out:
        for f in results.iterdir():
            if f.is_file():
                shutil.copyfile(f, Path(out) / f.name)
    print(f"GPU suite exit {tests.returncode}, device rows exit {b.returncode}; results in {results}")
    return tests.returncode or b.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sctab.bench.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="here: download the wheels for CPython 3.12 and write .whl/part-NN folders")
    pk.add_argument("--out", default=str(REPO / ".whl"))
    pk.add_argument("--part-mib", type=float, default=56.0, help="largest part (default %(default)s: the tree "
                    "travels with it, 64 MiB in all)")
    pk.add_argument("--image", default=str(REPO / "infra" / "gpu" / "device-image.txt"),
                    help="project names the device image already has (default %(default)s)")
    pk.add_argument("--requirement", action="append", default=None,
                    help="a requirement to pack instead of the GPU suite's set (repeatable)")
    pk.add_argument("--from-dir", default=None, help="pack the wheels already in this folder (no download)")
    sg = sub.add_parser("stage", help="there: keep the chunks of the parts in this copy in the stage folder")
    sg.add_argument("--src", default=str(REPO / ".whl"))
    sg.add_argument("--stage", default=str(STAGE))
    ins = sub.add_parser("install", help="there: join, verify and install the staged wheels")
    ins.add_argument("--stage", default=str(STAGE))
    ins.add_argument("--target", default=str(STAGE / "site"))
    rn = sub.add_parser("run", help="there: the GPU suite and the device bench rows")
    rn.add_argument("--site", default=str(STAGE / "site"), help="where install put the wheels ('' for none)")
    rn.add_argument("--device", default="cuda")
    rn.add_argument("--quick", action="store_true", help="the bench's tiny shapes (a smoke run)")
    rn.add_argument("--results", default=None, help="default benchmarks/results/gpu-<date>-<time>/")
    a = p.parse_args(argv)
    if a.cmd == "pack":
        reqs = a.requirement or REQUIREMENTS
        image = device_image(Path(a.image)) if a.image and Path(a.image).exists() else set()
        m = pack(Path(a.out), a.part_mib, reqs, image, [sys.executable, "-m", "pip"],
                 Path(a.from_dir) if a.from_dir else None)
        size = sum(w["size"] for w in m["wheels"].values()) / 2 ** 20
        print(f"{len(m['wheels'])} wheels, {size:,.1f} MiB, in {m['parts']} parts of <= {a.part_mib:g} MiB under "
              f"{a.out}; {len(m['dropped (on the device image)'])} dropped (on the device image). On the GPU "
              "machine, one copy per part (carry .whl/part-NN), each running `make gpu-check`; the last one "
              "installs and runs.")
        return 0
    if a.cmd == "stage":
        st = stage(Path(a.src), Path(a.stage))
        print(json.dumps(st))
        return 0
    if a.cmd == "install":
        return install(Path(a.stage), Path(a.target), sys.executable)
    dated = REPO / "benchmarks" / "results" / f"gpu-{dt.datetime.now():%Y-%m-%d-%H%M}"
    results = Path(a.results) if a.results else dated
    return run(results, Path(a.site) if a.site else None, a.device, a.quick, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
