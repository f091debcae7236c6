"""The paper: a trainable prefix for a frozen GPT-2 (Li & Liang, 2021). Start with prefix/tuning.py."""
from prefix.ablations import VARIANTS, EmbeddingOnly, InfixTuning, build_prefix, init_from_text, init_text_ids
from prefix.artifact import load_prefix, prefix_metadata, save_prefix
from prefix.bank import PrefixBank
from prefix.tuning import PrefixTuning, freeze, prefix_keys_values

__all__ = ["PrefixTuning", "EmbeddingOnly", "InfixTuning", "PrefixBank", "VARIANTS", "build_prefix", "freeze",
           "init_from_text", "init_text_ids", "load_prefix", "prefix_keys_values", "prefix_metadata", "save_prefix"]
