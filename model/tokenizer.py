"""GPT-2's byte-level BPE, through tiktoken; built from local files when a directory holds them."""
import json
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN

from common.errors import UserError

EOT = "<|endoftext|>"
EOT_ID = 50256
# (vocabulary, merges) file names: Hugging Face checkpoint directories, then OpenAI's original release
FILE_PAIRS = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]


def get_tokenizer(directory=None) -> tiktoken.Encoding:
    """The GPT-2 tokenizer: from `directory` if it holds vocabulary and merges files, else tiktoken's "gpt2"
    (which honours TIKTOKEN_CACHE_DIR and downloads otherwise)."""
    for vocab, merges in FILE_PAIRS:
        if directory and (Path(directory) / vocab).exists() and (Path(directory) / merges).exists():
            return from_files(Path(directory) / vocab, Path(directory) / merges)
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:  # requests' errors are OSErrors
        raise UserError(f"the GPT-2 tokenizer could not be loaded ({type(e).__name__}); offline, put vocab.json "
                        f"and merges.txt (or encoder.json and vocab.bpe) in the checkpoint directory, or set "
                        f"TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files") from None


def from_files(vocab_path: Path, merges_path: Path) -> tiktoken.Encoding:
    """Build the encoding from a vocabulary (token -> id) and its merges, checking that they agree."""
    byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
    decode = lambda token: bytes(byte_of[c] for c in token)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    ranks = {decode(token): i for token, i in vocab.items() if token != EOT}
    merges = [line.split() for line in merges_path.read_text(encoding="utf-8").splitlines()[1:] if line]
    # In GPT-2 a merged token's id is its merge rank: 256 single bytes come first, then merges in order.
    if len(ranks) != 256 + len(merges) or any(ranks.get(decode(a) + decode(b)) != 256 + i
                                              for i, (a, b) in enumerate(merges)):
        raise UserError(f"{vocab_path} and {merges_path} do not describe the same GPT-2 vocabulary")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: vocab.get(EOT, EOT_ID)}, explicit_n_vocab=len(ranks) + 1)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (its files store tokens this way)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
