"""Scores for generated table-to-text: the E2E challenge's five metrics, the WebNLG challenge's three, and the
DART repository's three; and each data set's protocol (splits.py), what sample.py --split runs.

Every scorer takes one hypothesis per table and all of that table's references, and reports on the
Prefix-Tuning paper's scales: BLEU, METEOR and ROUGE-L in percent (70.3, 46.3, 72.1), NIST and CIDEr as their
definitions give them (8.82, 2.46).
"""
from metrics.coco import coco_scores
from metrics.dart import dart_scores, format_dart
from metrics.e2e import e2e_scores, format_scores
from metrics.mteval import bleu, nist
from metrics.splits import score_split, scores_table
from metrics.webnlg import format_webnlg, webnlg_scores

__all__ = ["e2e_scores", "bleu", "nist", "coco_scores", "format_scores", "webnlg_scores", "format_webnlg",
           "dart_scores", "format_dart", "score_split", "scores_table"]
