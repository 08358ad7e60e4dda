"""`make gpu-pack` / `make gpu-check` (sctab.bench.gpu_check): wheels cut into parts that fit one copy, staged
copy by copy, installed only when every wheel is complete and intact, then the suite and the device rows run."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sctab.bench import gpu_check
from tests.paths import REPO_ROOT as REPO


def _wheel(folder: Path, name: str, payload_bytes: int) -> Path:
    """A real installable wheel of module ``name`` carrying ``payload_bytes`` of incompressible data."""
    dist = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n", f"{name}/blob.bin": os.urandom(payload_bytes),
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    out = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return out


def test_parts_never_exceed_the_limit_and_a_big_wheel_is_cut_into_chunks():
    parts = gpu_check.plan_parts([("big.whl", 250), ("a.whl", 60), ("b.whl", 50), ("c.whl", 40)], 100)
    assert all(sum(n for _, _, n in p) <= 100 for p in parts)
    chunks = sorted((o, n) for p in parts for name, o, n in p if name == "big.whl")
    assert chunks == [(0, 100), (100, 100), (200, 50)]
    placed = sorted(name for p in parts for name, o, n in p if name != "big.whl")
    assert placed == ["a.whl", "b.whl", "c.whl"]
    with pytest.raises(ValueError):
        gpu_check.plan_parts([("a.whl", 1)], 0)


def test_pack_stage_install_copy_by_copy(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "sctabgpuprobe", 300_000)  # larger than a part: cut into chunks
    _wheel(wheels, "sctabsmall", 20_000)
    _wheel(wheels, "onimage", 10_000)  # the device image has it: left out
    out = tmp_path / ".whl"
    m = gpu_check.pack(out, 0.1, [], {"onimage"}, [], download=wheels)
    assert set(m["wheels"]) == {"sctabgpuprobe-1.0-py3-none-any.whl", "sctabsmall-1.0-py3-none-any.whl"}
    assert m["dropped (on the device image)"] == ["onimage-1.0-py3-none-any.whl"]
    parts = sorted(out.glob("part-*"))
    assert len(parts) == m["parts"] >= 3
    for p in parts:  # each part fits its copy, and carries the manifest
        assert sum(f.stat().st_size for f in p.glob("*.whl.*")) <= 0.1 * 2 ** 20
        assert (p / "manifest.json").exists()

    stage_dir, site = tmp_path / "stage", tmp_path / "site"
    for i, part in enumerate(parts):  # one copy per part: the tree holds only that part each time
        copy = tmp_path / f"copy{i}" / ".whl"
        shutil.copytree(part, copy / part.name)
        st = gpu_check.stage(copy, stage_dir)
        last = i == len(parts) - 1
        assert (st["missing_parts"] == []) == last, st
        if not last:  # incomplete: nothing installed
            assert gpu_check.install(stage_dir, site, sys.executable) == 2 and not site.exists()
    assert gpu_check.install(stage_dir, site, sys.executable) == 0
    r = subprocess.run([sys.executable, "-c", "import sctabgpuprobe, sctabsmall; print(sctabgpuprobe.VALUE)"],
                       env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert r.stdout.strip() == "42", r.stderr


def test_a_corrupt_chunk_is_refused_and_nothing_installed(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "sctabgpuprobe", 200_000)
    out = tmp_path / ".whl"
    gpu_check.pack(out, 0.1, [], set(), [], download=wheels)
    stage_dir = tmp_path / "stage"
    gpu_check.stage(out, stage_dir)
    chunk = sorted(stage_dir.glob("*.whl.*"))[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert gpu_check.install(stage_dir, tmp_path / "site", sys.executable) == 2
    assert not (tmp_path / "site").exists()


def test_stage_without_any_part_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="make gpu-pack"):
        gpu_check.stage(tmp_path / "nothing", tmp_path / "stage")


def test_run_smokes_the_suite_and_the_device_rows_on_the_cpu(tmp_path):
    """Without a GPU: the suite skips with its reason, the device rows run on the CPU (quick), and the bench
    writes its own table with the runner's header into the results folder (and $OUT)."""
    results, out = tmp_path / "gpu-results", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "sctab.bench.gpu_check", "run", "--site", "", "--device", "cpu",
                        "--quick", "--results", str(results)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert "device rows exit 0" in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    log = (results / "gpu-tests.log").read_text()
    assert "no CUDA device" in log or "passed" in log
    table = (results / "gpu-bench-rows.md").read_text()
    assert "Command: `benchmarks/run.py --device cpu --cases device_loader" in table
    assert "Device: train stage loop" in table and "Device: `sctab annotate` end to end" in table
    rec = json.loads((results / "gpu-bench-rows.json").read_text())
    assert all(row["status"] == "ok" and row["checks_ok"] for row in rec["rows"]), [
        (row["name"], row.get("note")) for row in rec["rows"]]
    assert (out / "gpu-bench-rows.md").read_text() == table
