"""A bounded load test of a served model (`make serve`, `mlflow models serve`): concurrent clients x request sizes.

Each case sends ``requests_per_client`` requests of ``cells`` random raw-count cells from each of ``clients``
threads at once and reports throughput (cells/s over the case's wall time) and p50/p95 request latency. Every
request must be answered 200 with one prediction per cell; the server must answer ``/ping`` afterwards.
Only 127.0.0.1 by default: it is a check of one's own server, not a tool to aim at others.

    python benchmarks/serve_load.py --url http://127.0.0.1:5001 --genes models/sctab/seed_0/var.parquet \\
        --clients 1 4 8 --cells 10 100 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd


class LoadTestError(RuntimeError):
    """A request went unanswered or wrong, or the server stopped answering."""


@dataclass
class CaseResult:
    clients: int
    cells: int
    requests: int
    answered: int
    seconds: float
    cells_per_s: float
    p50_s: float
    p95_s: float


def body(genes: list[str], cells: int, seed: int = 0) -> str:
    """A request of ``cells`` Poisson raw counts over ``genes`` in MLflow's ``dataframe_split`` format."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(1.0, size=(cells, len(genes)))
    return json.dumps({"dataframe_split": {"columns": list(genes), "data": x.tolist()}})


def _post(session, url: str, payload: str, cells: int, timeout: float) -> float:
    t0 = time.perf_counter()
    r = session.post(url, data=payload, headers={"Content-Type": "application/json"}, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise LoadTestError(f"{url} answered {r.status_code}: {r.text[:300]}")
    n = len(r.json().get("predictions", []))
    if n != cells:
        raise LoadTestError(f"{url} returned {n} predictions for {cells} cells")
    return dt


def run_case(url: str, genes: list[str], clients: int, cells: int, requests_per_client: int = 3,
             timeout: float = 300.0) -> CaseResult:
    """One case: ``clients`` threads, each sending ``requests_per_client`` requests of ``cells`` cells."""
    import requests

    payloads = [body(genes, cells, seed=i) for i in range(clients)]
    invocations = url.rstrip("/") + "/invocations"

    def client(i: int) -> list[float]:
        with requests.Session() as s:
            return [_post(s, invocations, payloads[i], cells, timeout) for _ in range(requests_per_client)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        lat = [t for ts in pool.map(client, range(clients)) for t in ts]
    wall = time.perf_counter() - t0
    n = clients * requests_per_client
    return CaseResult(clients=clients, cells=cells, requests=n, answered=len(lat), seconds=round(wall, 3),
                      cells_per_s=round(n * cells / wall, 1), p50_s=round(float(np.percentile(lat, 50)), 4),
                      p95_s=round(float(np.percentile(lat, 95)), 4))


def ping(url: str, timeout: float = 10.0) -> None:
    import requests

    r = requests.get(url.rstrip("/") + "/ping", timeout=timeout)
    if r.status_code != 200:
        raise LoadTestError(f"{url}/ping answered {r.status_code} after the load")


def run(url: str, genes: list[str], clients: list[int], cells: list[int], requests_per_client: int = 3,
        allow_remote: bool = False) -> pd.DataFrame:
    """Every clients x cells case, then ``/ping``; one row per case."""
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1") and not allow_remote:
        raise LoadTestError(f"{url} is not on this machine; pass --allow-remote for a server you run elsewhere")
    if not genes:
        raise LoadTestError("no genes to send")
    rows = []
    for c in clients:
        for n in cells:
            rows.append(asdict(run_case(url, genes, c, n, requests_per_client)))
            print(f"clients {c:>3}, cells/request {n:>6}: {rows[-1]['cells_per_s']:>10,.0f} cells/s, "
                  f"p50 {rows[-1]['p50_s']:.3f} s, p95 {rows[-1]['p95_s']:.3f} s", flush=True)
    ping(url)
    return pd.DataFrame(rows)


def read_genes(path: str | Path) -> list[str]:
    """The model's genes: a var.parquet (``feature_id``) of a model folder or bundle, or a text file, one a line."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)["feature_id"].astype(str).tolist()
    return [g.strip() for g in path.read_text().splitlines() if g.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Load-test a served scTab model on 127.0.0.1: concurrent clients x "
                                "request sizes; throughput and p50/p95 latency; every request must be answered.")
    p.add_argument("--url", default="http://127.0.0.1:5001", help="the server (default: %(default)s, `make serve`)")
    p.add_argument("--genes", required=True, help="the model's var.parquet (e.g. models/sctab/seed_0/var.parquet)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients (default: 1 4 8)")
    p.add_argument("--cells", type=int, nargs="+", default=[10, 100, 1000], help="cells per request")
    p.add_argument("--requests", type=int, default=3, help="requests per client and case (default: %(default)s)")
    p.add_argument("--out", help="also write the table here (.csv or .md)")
    p.add_argument("--allow-remote", action="store_true", help="allow a server that is not on 127.0.0.1")
    a = p.parse_args(argv)
    if min(a.clients + a.cells + [a.requests]) < 1:
        p.error("--clients, --cells and --requests must be >= 1")
    try:
        table = run(a.url, read_genes(a.genes), a.clients, a.cells, a.requests, allow_remote=a.allow_remote)
    except (LoadTestError, OSError) as e:
        print(f"serve_load: error: {e}", file=sys.stderr)
        return 1
    print(table.to_string(index=False))
    if a.out:
        out = Path(a.out)
        out.write_text(table.to_markdown(index=False) + "\n" if out.suffix == ".md" else table.to_csv(index=False))
    return 0
