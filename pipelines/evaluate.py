"""Pipeline stage `evaluate`: every trained model on the test split, figures and the report."""

from __future__ import annotations

import argparse
import sys

from sctab.config import check_device, load_params
from sctab.params_schema import section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Evaluate every model folder under --models on the test split with the ontology-corrected "
        "macro F1 (also accuracy, NLL, per organ system, per cell type; for the scTab deep ensemble the "
        "uncertainty AUROC and calibration), write metrics.json (DVC metrics), plots/*.csv (DVC plots) and "
        "report/index.html with the figures beside the paper's numbers, and log the metrics to each model's "
        "MLflow run.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="the store (default: %(default)s)")
    parser.add_argument("--models", default="models", help="folder of model folders (default: %(default)s)")
    parser.add_argument("--out", default="reports/evaluate", help="output folder (default: %(default)s)")
    parser.add_argument("--embedding-cells", type=int, default=3000,
                        help="test cells shown in the uncertainty t-SNE (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu or cuda[:N]: where the models predict (default: params' train.device, auto "
                        "= the GPU when torch can use one)")
    args = parser.parse_args(argv)

    from sctab.allocator import keep_freed_memory
    from sctab.evaluate.comparison import evaluate_models  # torch and the models: after --help, which needs neither

    try:
        keep_freed_memory()  # prediction's per-batch buffers reuse freed memory (SCTAB_MALLOC=system: off)
        params = load_params(args.params)
        device = check_device(args.device or section(params, "train.device"), "--device")
        evaluate_models(args.models, args.store, args.out, params, embedding_cells=args.embedding_cells,
                        device=device)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
