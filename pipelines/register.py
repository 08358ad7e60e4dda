"""Pipeline stage `register`: each model folder -> an MLflow registered model version (@challenger)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sctab.config import load_params
from sctab.io import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Register the scTab deep ensemble (models/sctab) as one MLflow pyfunc model and each baseline "
        "as its own registered model (names: params.yaml registry.models). Each version takes raw counts by "
        "Ensembl id and returns label, Cell Ontology id, probability and uncertainty; it carries its lineage "
        "(git commit, data version, profile, test macro F1, member runs) as tags and gets the alias @challenger. "
        "Each also gets its default minimum probability for annotation (below it a cell is 'Unassigned'): the "
        "smallest whose assigned validation cells reach registry.min_probability_precision (docs/annotate.md), "
        "recorded in the bundle and as the tag min_probability. "
        "Each registered model and version gets a model card (training data, per-class test F1 and support, "
        "ensemble calibration, the default minimum probability, genes, intended use, limits, citation) as its "
        "MLflow description and as the run's model_card.md (docs/model-card.md). "
        "Unchanged models are not registered twice (their cards are brought up to date). "
        "The models are ranked by validation macro F1; registry.champion (best | sctab) picks the one `sctab "
        "annotate` uses by default (the registered-model tag annotate_default=true), shown in the cards and "
        "`sctab models`. "
        "`make promote` then moves @champion.")
    parser.add_argument("--params", default="params.yaml", help="YAML parameter file (default: %(default)s)")
    parser.add_argument("--models", default="models", help="folder of model folders (default: %(default)s)")
    parser.add_argument("--store", default="data/store", help="the store: class ontology ids and the validation split "
                        "that chooses the default minimum probability (default: %(default)s)")
    parser.add_argument("--ontology", default="data/ontology/cl.obo", help="Cell Ontology OBO (default: %(default)s)")
    parser.add_argument("--metrics", default="reports/evaluate/metrics.json",
                        help="the evaluate stage's metrics: each model's test macro F1 (default: %(default)s)")
    parser.add_argument("--per-class", default="reports/evaluate/plots/per_class_f1.csv",
                        help="the evaluate stage's per-class test F1 of each model, quoted in the model cards; "
                        "when absent the cards say so (default: %(default)s)")
    parser.add_argument("--out", default="reports/registry/registered.json",
                        help="what was registered (default: %(default)s)")
    args = parser.parse_args(argv)

    from sctab.registry import RegistryError, register_pipeline_models  # MLflow: after --help, which needs none
    from sctab.registry.model_card import read_per_class_f1
    from sctab.registry.register import store_class_ids

    try:
        metrics = json.loads(Path(args.metrics).read_text()).get("models", {})
        per_class = read_per_class_f1(args.per_class, classes=list(store_class_ids(args.store)))
        ranking: dict = {}
        versions = register_pipeline_models(args.models, store=args.store, ontology_path=args.ontology,
                                            metrics=metrics, params=load_params(args.params), per_class_f1=per_class,
                                            reports_from={"metrics": args.metrics, "per_class_f1": args.per_class},
                                            ranking_out=ranking)
    except (FileNotFoundError, ValueError, RegistryError) as e:
        print(f"register: error: {e}", file=sys.stderr)
        return 2
    for v in versions:
        f1 = "unknown" if v.test_f1_macro is None else f"{v.test_f1_macro:.4f}"
        print(f"{v.name} version {v.version}{' (unchanged, already registered)' if v.reused else ''}: "
              f"test macro F1 {f1}")
    print("validation ranking: " + " > ".join(f"{r['name']} {r['val_f1_macro']:.4f}" if r["val_f1_macro"] is not None
                                              else f"{r['name']} (no validation F1)" for r in ranking["models"])
          + f"; best on validation: {ranking['best']}; `sctab annotate` default: {ranking['default']} "
          f"(registry.champion: {ranking['rule']})")
    write_json(args.out, {"models": [v.as_dict() for v in versions], "validation_ranking": ranking["models"],
                          "best": ranking["best"], "default": ranking["default"], "champion_rule": ranking["rule"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
