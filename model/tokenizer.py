"""GPT-2's byte-level BPE, through tiktoken; built from local files when a directory holds them."""
import functools
import json
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN

from common.errors import UserError

EOT = "<|endoftext|>"
EOT_ID = 50256
NEWLINES = (198, 628)  # "\n" and "\n\n": the paper's code bans them in decoding, so one text is one line
# (vocabulary, merges) file names: Hugging Face checkpoint directories, then OpenAI's original release
FILE_PAIRS = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]


def get_tokenizer(directory=None) -> tiktoken.Encoding:
    """The GPT-2 tokenizer: from `directory` if it holds vocabulary and merges files, else tiktoken's "gpt2"
    (which honours TIKTOKEN_CACHE_DIR and downloads otherwise)."""
    for vocab, merges in FILE_PAIRS:
        if directory and (Path(directory) / vocab).exists() and (Path(directory) / merges).exists():
            paths = (Path(directory) / vocab, Path(directory) / merges)
            return _from_unchanged_files(*paths, tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths))
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError) as e:  # requests' errors are OSErrors
        raise UserError(f"the GPT-2 tokenizer could not be loaded ({type(e).__name__}); offline, put vocab.json "
                        f"and merges.txt (or encoder.json and vocab.bpe) in the checkpoint directory, or set "
                        f"TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached gpt2 files") from None


def from_files(vocab_path: Path, merges_path: Path) -> tiktoken.Encoding:
    """Build the encoding from a vocabulary (token -> id) and its merges, checking that they agree.

    In GPT-2 a token's id is its merge rank: the 256 single bytes take ids 0-255, each line i of the merges makes
    the token with id 256 + i, and <|endoftext|> comes last.
    """
    vocab, merges = _read_vocab(vocab_path), _read_merges(merges_path)
    eot = vocab.pop(EOT, EOT_ID)
    ranks = {_token_bytes(vocab_path, token): i for token, i in vocab.items()}
    pairs = [(_token_bytes(merges_path, a), _token_bytes(merges_path, b)) for a, b in merges]
    agree = (len(ranks) == 256 + len(pairs) and eot == len(ranks)
             and sorted(ranks.get(bytes([b])) for b in range(256)) == list(range(256))
             and all(ranks.get(a + b) == 256 + i for i, (a, b) in enumerate(pairs)))
    if not agree:
        raise UserError(f"{vocab_path} and {merges_path} do not describe the same GPT-2 vocabulary")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: eot},
                             explicit_n_vocab=len(ranks) + 1)


@functools.lru_cache(maxsize=4)
def _from_unchanged_files(vocab_path: Path, merges_path: Path, stamps: tuple) -> tiktoken.Encoding:
    """from_files, built once per process for files that have not changed since (`stamps`: their mtimes and
    sizes): the scripts that run others in one process (experiments/) load the same tokenizer hundreds of times."""
    return from_files(vocab_path, merges_path)


def _read_vocab(path: Path) -> dict[str, int]:
    """vocab.json (or encoder.json): one JSON object of tokens and their integer ids."""
    text = _read_text(path)
    try:
        vocab = json.loads(text)
    except (ValueError, RecursionError):
        vocab = None
    if not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise UserError(f"{path} is not a GPT-2 vocabulary (a JSON object of tokens and their integer ids)")
    return vocab


def _read_merges(path: Path) -> list[list[str]]:
    """merges.txt (or vocab.bpe): a "#version" line, then one merge of two tokens a line."""
    lines = _read_text(path).splitlines()
    merges = [line.split() for line in lines[1 if lines and lines[0].startswith("#") else 0:] if line]
    if any(len(merge) != 2 for merge in merges):
        raise UserError(f"{path} is not GPT-2 merges (a #version line, then two tokens a line)")
    return merges


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text, so not a GPT-2 tokenizer file") from None


def _token_bytes(path: Path, token: str) -> bytes:
    """A token's bytes from GPT-2's printable form of them."""
    try:
        return bytes(_BYTE_OF[c] for c in token)
    except KeyError as e:
        raise UserError(f"{path} holds the token {token[:40]!r}, whose character {e.args[0]!r} stands for no "
                        f"byte in GPT-2's files") from None


def save_tokenizer_files(tokenizer: tiktoken.Encoding, directory: Path) -> None:
    """Write vocab.json and merges.txt, the Hugging Face form of GPT-2's BPE, for a tiktoken encoding."""
    vocab, merges = _tokenizer_files(tokenizer)
    (directory / "vocab.json").write_text(vocab, encoding="utf-8")
    (directory / "merges.txt").write_text(merges, encoding="utf-8")


@functools.lru_cache(maxsize=2)
def _tokenizer_files(tokenizer: tiktoken.Encoding) -> tuple[str, str]:
    """vocab.json's and merges.txt's texts, made once per encoding (a second apiece: a run exports often)."""
    ranks = tokenizer._mergeable_ranks
    char_of = _bytes_to_unicode()
    text = lambda token: "".join(char_of[b] for b in token)
    vocab = {text(token): rank for token, rank in ranks.items()} | {EOT: tokenizer.eot_token}
    merges = [" ".join(map(text, _last_merge(token, rank, ranks)))
              for token, rank in sorted(ranks.items(), key=lambda item: item[1]) if rank >= 256]
    return json.dumps(vocab, ensure_ascii=False), "#version: 0.2\n" + "".join(m + "\n" for m in merges)


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens merged into `token`: BPE on its bytes with the merges ranked before it leaves exactly two."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} of rank {rank} is not a merge of two earlier tokens")
    return parts[0], parts[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (its files store tokens this way)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF = {char: byte for byte, char in _bytes_to_unicode().items()}
