"""sctab.allocator: freed memory kept for reuse, measured by the page faults a repeated large buffer costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sctab import allocator

_PROBE = textwrap.dedent("""
    import json, resource
    import numpy as np
    from sctab.allocator import keep_freed_memory
    took = keep_freed_memory()
    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    base, faults, after = rss_mib(), [], []
    for _ in range(6):  # one 160 MB buffer per 'batch', written and freed, as a forward pass does
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = np.empty(40_000_000, dtype=np.float32)
        buf.fill(1.0)
        del buf
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        after.append(rss_mib() - base)
    print(json.dumps({"took": took, "faults": faults, "rss_after_free_mib": after}))
""")


def _probe(mode: str) -> dict:
    env = {**os.environ, allocator.ENV: mode}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_skips_the_page_faults_of_every_later_batch():
    kept, system = _probe("keep"), _probe("system")
    assert kept["took"] is True and system["took"] is False
    # glibc's default: every batch maps fresh zero pages (faults: per 4 KiB page, or per huge page where the
    # kernel gives them) and unmaps them when freed
    assert min(system["faults"]) > 100
    assert max(system["rss_after_free_mib"]) < 50
    # kept: the first batch grows the heap, the later ones reuse it without a fault; the block stays resident
    assert kept["faults"][0] > 100
    assert max(kept["faults"][1:]) < min(system["faults"]) // 10
    assert min(kept["rss_after_free_mib"]) > 140


def test_mode_is_checked(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert allocator.mode() == "keep"
    monkeypatch.setenv(allocator.ENV, "System")
    assert allocator.mode() == "system" and allocator.keep_freed_memory() is False
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match="SCTAB_MALLOC='jemalloc' is not one of keep, system"):
        allocator.keep_freed_memory()


def test_limit_is_checked(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "keep")
    for bad in (0, 1024):
        with pytest.raises(ValueError, match="limit_mib must be between 1 and 1023"):
            allocator.keep_freed_memory(bad)


def test_annotate_command_sets_the_allocator(monkeypatch, tmp_path, capsys):
    """`sctab annotate` calls it first: a wrong SCTAB_MALLOC is its error, before any model is read."""
    from sctab.cli import main

    monkeypatch.setenv(allocator.ENV, "bogus")
    rc = main(["annotate", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad"), "--model",
               str(tmp_path / "no-model")])
    assert rc == 2
    assert "SCTAB_MALLOC='bogus'" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()


_HEAP_PROBE = textwrap.dedent("""
    import json
    import numpy as np
    from sctab.allocator import heap_stats, keep_freed_memory, release_freed_memory
    keep_freed_memory()
    base = heap_stats()
    bufs = [np.ones(2_000_000, np.float32) for _ in range(20)]  # 20 x 8 MB from the heap
    live = heap_stats()
    pin = [np.ones(1000, np.float32)]  # a small allocation above them keeps the heap from shrinking at its top
    del bufs
    freed = heap_stats()
    released = release_freed_memory()
    print(json.dumps({"base": base, "live": live, "freed": freed, "released": released}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_info: Linux only")
def test_heap_stats_tell_live_data_from_freed_memory_the_heap_keeps():
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    mb = 2**20
    assert got["live"]["in_use"] - got["base"]["in_use"] > 150 * mb  # the 160 MB of buffers, live
    assert got["freed"]["free"] - got["base"]["free"] > 150 * mb  # freed, but kept in the heap
    assert got["freed"]["in_use"] - got["base"]["in_use"] < 10 * mb
    assert got["freed"]["held"] == got["freed"]["in_use"] + got["freed"]["free"]
    assert got["released"] is True
