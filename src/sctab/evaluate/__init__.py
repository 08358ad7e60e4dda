"""sctab.evaluate: scores of any classifier on a store (ontology-corrected macro F1 and friends), per organ
system, with deep-ensemble uncertainty; the evaluate stage's report beside the paper's figures."""

from sctab.evaluate.metrics import correct_predictions, evaluate_probs, macro_f1, per_class_f1
from sctab.evaluate.predict import check_fits_store, predict_split, predict_split_members
from sctab.evaluate.scores import score_probs, score_split, score_splits

__all__ = ["correct_predictions", "evaluate_probs", "macro_f1", "per_class_f1", "predict_split",
           "predict_split_members", "check_fits_store", "score_probs", "score_split", "score_splits"]
