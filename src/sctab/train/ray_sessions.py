"""Ray's leftover session folders: every local Ray writes ``<tmp>/ray/session_<date>_<pid>/`` (logs, sockets,
spilled objects) and leaves it behind, also when it was killed. Before a local Ray starts, the folders of
Ray instances that are gone are removed.

A session counts as gone when it is ours (same user), older than ``min_age_s`` (a session that is starting
has no processes yet) and no process of ours names it on its command line (the GCS server and raylet are
started with ``--log_dir=<session>/logs``). Other users' sessions are never touched.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import psutil


def ray_temp_dir() -> Path:
    """Where a local Ray puts its sessions: ``$RAY_TMPDIR/ray``, else ``$TMPDIR/ray`` on Linux, else /tmp/ray."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def _live_names(uid: int) -> str:
    """Command lines of this user's processes, joined (a session is live when its folder name appears)."""
    lines = []
    for p in psutil.process_iter(["uids", "cmdline"]):
        try:
            if p.info["uids"] is not None and p.info["uids"].real == uid and p.info["cmdline"]:
                lines.append(" ".join(p.info["cmdline"]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return "\n".join(lines)


def stale_sessions(root: str | Path | None = None, min_age_s: float = 600) -> list[Path]:
    """This user's session folders under ``root`` with no live process behind them."""
    root = Path(root) if root is not None else ray_temp_dir()
    if not root.is_dir():
        return []
    uid = os.getuid()
    now = time.time()
    candidates = []
    for d in root.glob("session_*"):
        try:
            st = d.lstat()
        except OSError:
            continue
        if d.is_symlink() or not d.is_dir() or st.st_uid != uid or now - st.st_mtime < min_age_s:
            continue
        candidates.append(d)
    if not candidates:
        return []
    live = _live_names(uid)
    return [d for d in sorted(candidates) if d.name not in live]


def remove_stale_sessions(root: str | Path | None = None, min_age_s: float = 600) -> list[Path]:
    """Remove :func:`stale_sessions`; return what was removed (a folder that resists is skipped)."""
    removed = []
    for d in stale_sessions(root, min_age_s):
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    if removed:
        print(f"removed {len(removed)} leftover Ray session folder(s) under {removed[0].parent}", flush=True)
    return removed
