"""Evaluators that score every task during fine-tuning."""

from research.evaluation.evaluator import EvalSet, Evaluator, eval_sets, score

__all__ = ["EvalSet", "Evaluator", "eval_sets", "score"]
