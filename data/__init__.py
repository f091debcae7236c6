"""Datasets to batches: tables and their references -> GPT-2 token sequences with a loss mask -> padded batches."""
from data.datasets import DATASETS, SPLITS, TEXT_FORMS, check_text_form, load_examples
from data.example import Example
from data.positions import rows_that_fit
from data.token_cache import tokenized_split, tokenized_splits
from data.tokens import IGNORE_INDEX, Sequences, prompt_ids
from data.webnlg import SEEN_CATEGORIES, category_subset

__all__ = ["DATASETS", "SPLITS", "TEXT_FORMS", "check_text_form", "Example", "load_examples", "rows_that_fit",
           "tokenized_split", "tokenized_splits", "Sequences", "prompt_ids", "IGNORE_INDEX", "SEEN_CATEGORIES",
           "category_subset"]
