"""GPT-2 whose attention accepts extra keys/values per layer; loading, tokenizer, KV cache, decoding."""
from model.cache import KVCache
from model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "KVCache"]
