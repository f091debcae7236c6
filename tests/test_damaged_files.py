"""Damaged and hostile files (issue 17): every reader either returns what was written or says what is wrong in one
sentence (a UserError), never a traceback and never a tensor built from the wrong bytes.

The mutation tests are seeded: each damages small files in thousands of ways (truncations, bit flips, edited header
fields, swapped files) and asserts, per mutation, that the load equals the original or is a UserError. Formats
without a checksum (safetensors, ckpt.pt's tensors) cannot notice a flipped bit in their data; there the test asks
for the next best thing: the reader's answer agrees with the official implementation's, or keeps the structure.
"""
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

from common.errors import UserError
from model import safetensors as st
from model.gpt import GPT, GPTConfig
from model.loading import save_pretrained
from model.tokenizer import EOT, GPT2_PATTERN, from_files, get_tokenizer, save_tokenizer_files

SEED = 17


@pytest.fixture
def scratch(tmp_path):
    """A folder for the mutation tests' thousands of small writes: in memory where /dev/shm allows (a disk can
    take milliseconds a write), else tmp_path."""
    import os
    import shutil
    import tempfile
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        yield tmp_path
        return
    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="damaged-files-")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- helpers ----------------------------------------------------------------------------------------------

def flip_bit(data: bytes, rng: random.Random, end: int | None = None) -> bytes:
    i = rng.randrange(end or len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


JUNK = [-1, 0, 1, 3, 2 ** 64, 1.5, True, None, "", "F32", "I64", "F8_E4M3", [], [0], [1, 2], [-1, 2], [2, 1],
        [0, 10 ** 9], {}, {"a": 1}, "x" * 100]


def edit_header(data: bytes, rng: random.Random) -> bytes:
    """The file with one field of its JSON header replaced, deleted or added, re-encoded with a correct length."""
    n = header_end(data)
    header = json.loads(data[8:n])
    name = rng.choice(list(header))
    entry = header[name]
    action = rng.randrange(5)
    if action == 0:
        header[name] = rng.choice(JUNK)
    elif action == 1 and isinstance(entry, dict) and entry:
        entry[rng.choice(list(entry))] = rng.choice(JUNK)
    elif action == 2 and isinstance(entry, dict) and entry:
        del entry[rng.choice(list(entry))]
    elif action == 3 and isinstance(entry, dict):
        entry[rng.choice(["extra", "dtype", "shape"])] = rng.choice(JUNK)
    else:
        value = rng.choice([v for v in entry.values()] if isinstance(entry, dict) and entry else JUNK)
        if isinstance(value, list) and value and all(type(x) is int for x in value):
            value[rng.randrange(len(value))] += rng.choice([-1, 1, 2, 8])
        elif isinstance(entry, dict) and entry:
            entry[rng.choice(list(entry))] = value
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data[n:]


NOTICEABLE = (0, 1, 3, 4, 5)  # every damage but a flipped bit in the tensors' data, which has no checksum


def mutate(data: bytes, rng: random.Random, kinds=range(6)) -> bytes:
    """One random damage to a safetensors file's bytes."""
    kind = rng.choice(kinds)
    if kind == 0:
        return data[:rng.randrange(len(data))]                    # truncated
    if kind == 1:
        return flip_bit(data, rng, header_end(data))             # a bit flipped in the length or the header
    if kind == 2:
        return flip_bit(data, rng)                               # a bit flipped anywhere
    if kind == 3:
        return data + bytes(rng.randrange(1, 9))                 # bytes appended
    if kind == 4:
        i = rng.randrange(8, header_end(data))                   # a header byte overwritten by another
        return data[:i] + bytes([rng.choice(b'{}[]",:0123456789-eE. aZ\xff')]) + data[i + 1:]
    return edit_header(data, rng)


def loads(read, *args):
    """What `read` returns, or the UserError it raises; any other exception fails the test."""
    try:
        return read(*args)
    except UserError as e:
        assert "\n" not in str(e) and "Traceback" not in str(e)
        return e


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def tiny_tokenizer() -> tiktoken.Encoding:
    """A GPT-2-style BPE of 256 bytes and six merges, small enough to load thousands of times."""
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"th", b"the", b"at", b" c", b" cat", b" the"):
        ranks[token] = len(ranks)
    return tiktoken.Encoding("tiny", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


TINY = GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=263, block_size=16)


# ---- the safetensors reader: the ten header defects ------------------------------------------------

def raw_file(path, header, data=b"\0" * 8) -> None:
    encoded = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
DEFECTS = {
    "a list, not an object": ([GOOD["a"]], "header is a JSON list, not an object"),
    "no data_offsets": ({"a": {"dtype": "F32", "shape": [2]}}, "tensor 'a' is not described by exactly dtype"),
    "begin > end": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "'a' has data_offsets that end "
                                                                                   "before they begin"),
    "negative offset": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-4, 4]}},
                        r"'a' has data_offsets \[-4, 4\], not two non-negative integers"),
    "shape against bytes": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                            "'a' has 8 bytes, but F32 of shape .3. takes 12"),
    "shape not integers": ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}},
                           "'a' has shape ..2.., not a list of non-negative integers"),
    "entry not an object": ({"a": [0, 8]}, "'a' is not described by exactly dtype, shape and data_offsets"),
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "'b' begins at byte 0 .* overlaps"),
    "unknown dtype": ({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}},
                      "F8_E4M3, which this reader does not know"),
    "beyond the file": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "is truncated"),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_header_defect_is_one_sentence_naming_the_file(tmp_path, defect):
    header, message = DEFECTS[defect]
    path = tmp_path / "model.safetensors"
    raw_file(path, header)
    for read in (st.load_file, st.load_metadata):  # one validation for both
        with pytest.raises(UserError, match=message) as error:
            read(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("header,data,message", [
    (GOOD, b"\0" * 12, "4 bytes follow the last tensor"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "not at the start of the data"),
    ({**GOOD, "__metadata__": {"n": 1}}, b"\0" * 8, "__metadata__ is not an object of strings"),
    (b'{"a":1,"a":2}', b"", "names 'a' twice"),
    (b"\xff\xfe{}", b"", "not UTF-8 JSON"),
    (b"[" * 100_000, b"", "not UTF-8 JSON"),
], ids=["bytes after", "gap", "metadata", "repeated name", "not utf-8", "deep nesting"])
def test_other_violations_of_the_format(tmp_path, header, data, message):
    raw_file(tmp_path / "x.safetensors", header, data)
    with pytest.raises(UserError, match=message):
        st.load_file(tmp_path / "x.safetensors")


def test_a_header_length_over_the_cap_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    with pytest.raises(UserError, match="limit of 100,000,000"):
        st.load_metadata(tmp_path / "x.safetensors")


def test_unaligned_and_empty_tensors_load(tmp_path):
    tensors = {"flag": torch.tensor([True, False, True]), "x": torch.randn(2, 3), "none": torch.zeros(0, 4),
               "scalar": torch.tensor(7, dtype=torch.int16)}
    header, offset, data = {}, 0, b""
    for name, t in tensors.items():  # no padding: x starts at byte 3 of the data
        blob = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": st.NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset, data = offset + len(blob), data + blob
    raw_file(tmp_path / "x.safetensors", header, data)
    loaded = st.load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(loaded[k], t) and loaded[k].dtype == t.dtype for k, t in tensors.items())


# ---- the safetensors reader: mutations, against the official implementation --------------------------------

def test_safetensors_mutations_agree_with_the_official_reader(scratch):
    official = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open
    path = scratch / "x.safetensors"
    st.save_file({"w": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int16), "h": torch.randn(2).half(),
                  "e": torch.zeros(0, 2)}, path, {"format": "pt", "note": "small"})
    original = path.read_bytes()
    rng, outcomes = random.Random(SEED), {"loaded": 0, "refused": 0}
    for _ in range(2500):
        path.write_bytes(mutate(original, rng))
        ours, metadata = loads(st.load_file, path), loads(st.load_metadata, path)
        assert isinstance(ours, UserError) == isinstance(metadata, UserError)
        if isinstance(ours, UserError):
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1  # then the official reader accepts it too, and reads the same tensors
        theirs = official.load_file(str(path))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape for k in ours)
        assert all(same_bytes(ours[k], theirs[k]) for k in ours)  # bytes: a flipped bit may make a NaN
        with safe_open(str(path), "pt") as f:
            assert metadata == (f.metadata() or {})
    assert min(outcomes.values()) > 100, outcomes  # both branches exercised


# ---- config.json and the checkpoint directory --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(GPT(TINY), tmp_path_factory.mktemp("ckpt") / "model", tiny_tokenizer())


@pytest.mark.parametrize("edit,message", [
    ({"n_layer": 10 ** 9}, "n_layer to 1000000000, not a positive integer of at most 1,024"),
    ({"n_embd": 10 ** 6}, "n_embd to 1000000, not a positive integer"),
    ({"n_head": 0}, "n_head to 0"),
    ({"n_positions": "16"}, "n_positions to '16'"),
    ({"vocab_size": 263.0}, "vocab_size to 263.0"),
    ({"n_head": 3}, r"n_embd \(8\) to no multiple of n_head \(3\)"),
    ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
    ({"n_embd": 16, "n_head": 2}, "has shape"),  # sane numbers, but not the checkpoint's shapes
])
def test_a_config_that_is_insane_or_disagrees_with_the_weights_is_refused(tiny_checkpoint, tmp_path, edit, message):
    import shutil
    directory = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(UserError, match=message):
        GPT.from_pretrained(str(directory))


def test_a_config_that_is_not_an_object_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="config.json is a JSON list"):
        GPT.from_pretrained(str(tmp_path))


def test_checkpoint_directory_mutations(tiny_checkpoint, scratch):
    import shutil
    directory = scratch / "model"
    shutil.copytree(tiny_checkpoint, directory)
    original = {k: v.clone() for k, v in GPT.from_pretrained(str(directory)).state_dict().items()}
    weights, config = (directory / "model.safetensors").read_bytes(), (directory / "config.json").read_bytes()
    rng, refused = random.Random(SEED), 0
    for i in range(300):
        if i % 2:  # the weights' header damaged (a flipped bit in their data is not detectable: no checksum)
            (directory / "model.safetensors").write_bytes(mutate(weights, rng, NOTICEABLE))
            (directory / "config.json").write_bytes(config)
        else:
            (directory / "model.safetensors").write_bytes(weights)
            (directory / "config.json").write_bytes(mutate_text(config, rng))
        model = loads(GPT.from_pretrained, str(directory))
        if isinstance(model, UserError):
            refused += 1
        else:
            state = model.state_dict()
            assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
    assert refused > 100


def mutate_text(data: bytes, rng: random.Random) -> bytes:
    """One random damage to a text file: truncated, a bit flipped, a line dropped, doubled or swapped."""
    kind = rng.randrange(4)
    if kind == 0:
        return data[:rng.randrange(len(data))]
    if kind == 1:
        return flip_bit(data, rng)
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if kind == 2:
        return b"\n".join(lines[:i] + lines[i + 1:] if rng.random() < 0.5 else lines[:i] + [lines[i]] + lines[i:])
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


# ---- the tokenizer files ------------------------------------------------------------------------------------

def test_tokenizer_file_mutations(scratch):
    save_tokenizer_files(tiny_tokenizer(), scratch)
    vocab, merges = scratch / "vocab.json", scratch / "merges.txt"
    original_bytes = vocab.read_bytes(), merges.read_bytes()
    original = from_files(vocab, merges)
    rng, refused = random.Random(SEED), 0
    for i in range(1500):
        damaged = [mutate_text(data, rng) if rng.random() < 0.6 else data for data in original_bytes]
        if i % 10 == 0:
            damaged.reverse()  # the two files swapped
        vocab.write_bytes(damaged[0])
        merges.write_bytes(damaged[1])
        loaded = loads(get_tokenizer, scratch)
        if isinstance(loaded, UserError):
            refused += 1
        else:
            assert loaded._mergeable_ranks == original._mergeable_ranks and loaded.eot_token == original.eot_token
    assert refused > 500


@pytest.mark.parametrize("vocab,merges,message", [
    ('{"a": "0"}', "#version: 0.2\n", "vocab.json is not a GPT-2 vocabulary"),
    ('[1]', "#version: 0.2\n", "vocab.json is not a GPT-2 vocabulary"),
    ('{"a": 0', "#version: 0.2\n", "vocab.json is not a GPT-2 vocabulary"),
    ('{"\\u0000": 0}', "#version: 0.2\n", r"holds the token '\\x00', whose character"),
    ('{"a": 0}', "#version: 0.2\na b c\n", "merges.txt is not GPT-2 merges"),
    ('{"a": 0}', "#version: 0.2\na b\n", "do not describe the same"),
])
def test_malformed_tokenizer_files_are_one_sentence(tmp_path, vocab, merges, message):
    (tmp_path / "vocab.json").write_text(vocab)
    (tmp_path / "merges.txt").write_text(merges)
    with pytest.raises(UserError, match=message):
        get_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        get_tokenizer(tmp_path)


# ---- exported prefixes and PEFT adapters ---------------------------------------------------------------------

def test_exported_prefix_mutations(scratch):
    from prefix.artifact import load_prefix, save_prefix
    from prefix.tuning import PrefixTuning
    torch.manual_seed(0)
    path = scratch / "prefix.safetensors"
    save_prefix(PrefixTuning(TINY, 3, mid_dim=8).export(), path, base_model="tiny")
    original, data = load_prefix(path, TINY), path.read_bytes()
    rng, refused = random.Random(SEED), 0
    for _ in range(1000):
        path.write_bytes(mutate(data, rng, NOTICEABLE))
        loaded = loads(load_prefix, path, TINY)
        if isinstance(loaded, UserError):
            refused += 1
        else:
            assert type(loaded) is type(original) and loaded.positions_from_zero == original.positions_from_zero
            assert torch.equal(loaded.table, original.table)
    assert refused > 500


@pytest.mark.parametrize("key,value,message", [
    ("n_layer", "one", "n_layer is 'one', not a positive integer"),
    ("prefix_len", "-3", "prefix_len is '-3', not a positive integer"),
    ("positions", "sideways", "positions is 'sideways', not one of after_prefix, from_zero"),
])
def test_exported_prefix_metadata_is_checked(tmp_path, key, value, message):
    from prefix.artifact import load_prefix, save_prefix
    from prefix.tuning import PrefixTuning
    path = tmp_path / "prefix.safetensors"
    save_prefix(PrefixTuning(TINY, 3, mid_dim=8).export(), path, base_model="tiny")
    st.save_file(st.load_file(path), path, {**st.load_metadata(path), key: value})
    with pytest.raises(UserError, match=message):
        load_prefix(path, TINY)


def test_peft_adapter_mutations(scratch):
    from prefix.peft_format import load_peft_adapter, save_peft_adapter
    from prefix.tuning import PrefixTuning
    torch.manual_seed(0)
    save_peft_adapter(PrefixTuning(TINY, 3, mid_dim=8).export(), scratch, base_model="tiny")
    config_path, weights_path = scratch / "adapter_config.json", scratch / "adapter_model.safetensors"
    original = load_peft_adapter(scratch, TINY).table.clone()
    config, weights = config_path.read_bytes(), weights_path.read_bytes()
    rng, refused = random.Random(SEED), 0
    for i in range(1000):
        config_path.write_bytes(mutate_text(config, rng) if i % 2 else config)
        weights_path.write_bytes(weights if i % 2 else mutate(weights, rng, NOTICEABLE))
        loaded = loads(load_peft_adapter, scratch, TINY)
        if isinstance(loaded, UserError):
            refused += 1
        else:
            assert torch.equal(loaded.table, original)
    assert refused > 300


# ---- the tokenized-data cache ---------------------------------------------------------------------------------

def small_sequences():
    from data.tokens import Sequences
    return Sequences.from_pairs(tiny_tokenizer(), [("the cat", "at the"), ("cat", "the cat sat")])


def test_saved_sequences_mutations(scratch):
    from data.tokens import Sequences
    path = scratch / "tokens.npz"
    original = small_sequences()
    original.save(path)
    data = path.read_bytes()
    rng, refused = random.Random(SEED), 0
    for _ in range(1000):
        kind = rng.randrange(3)  # the zip's CRCs let every flipped bit be noticed
        path.write_bytes(data[:rng.randrange(len(data))] if kind == 0 else
                         flip_bit(data, rng) if kind == 1 else data + bytes(rng.randrange(1, 30)))
        loaded = loads(Sequences.load, path)
        if isinstance(loaded, UserError):
            refused += 1
        else:
            assert loaded.eot == original.eot and all(np.array_equal(getattr(loaded, k), getattr(original, k))
                                                      for k in ("tokens", "offsets", "loss_starts"))
    assert refused > 500


@pytest.mark.parametrize("arrays,message", [
    (dict(tokens=np.zeros(3, np.int32)), "not a file of saved sequences"),
    (dict(tokens=np.zeros(3, np.int64), offsets=np.array([0, 3]), loss_starts=np.array([1]), eot=np.array(5)),
     "not a file of saved sequences"),
    (dict(tokens=np.zeros(3, np.int32), offsets=np.array([0, 4]), loss_starts=np.array([1]), eot=np.array(5)),
     "offsets and loss starts do not fit"),
    (dict(tokens=np.zeros(3, np.int32), offsets=np.array([0, 3]), loss_starts=np.array([3]), eot=np.array(5)),
     "offsets and loss starts do not fit"),
])
def test_foreign_saved_sequences_are_refused(tmp_path, arrays, message):
    from data.tokens import Sequences
    with open(tmp_path / "x.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(UserError, match=message):
        Sequences.load(tmp_path / "x.npz")


def test_a_damaged_cache_is_built_again(tmp_path, tokenizer):
    from data.token_cache import tokenized_split
    from data.tokens import Sequences
    from test_data import npz_files, write_e2e_csv
    folder = write_e2e_csv(tmp_path / "e2e", [["name[Aromi], eatType[pub]", "Aromi is a pub."]])
    first = tokenized_split("e2e", "dev", tokenizer, folder)
    (cache,) = npz_files(folder)
    for damage in (cache.read_bytes()[:100], b"PK\x03\x04 not a zip"):
        cache.write_bytes(damage)
        again = tokenized_split("e2e", "dev", tokenizer, folder)
        assert np.array_equal(again.tokens, first.tokens) and np.array_equal(again.loss_starts, first.loss_starts)
        assert np.array_equal(Sequences.load(cache).tokens, first.tokens)  # and the damaged file replaced


# ---- train.py's ckpt.pt ---------------------------------------------------------------------------------------

def small_checkpoint():
    from prefix.tuning import PrefixTuning
    torch.manual_seed(0)
    method = PrefixTuning(TINY, 2, mid_dim=4)
    optimizer = torch.optim.AdamW(method.parameters())
    sum(p.sum() for p in method.parameters()).backward()
    optimizer.step()
    return {"run_id": "20261130-000000-abcdef", "iter": 3, "best_val_loss": 2.5, "trained": method.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": [torch.get_rng_state()], "device_rng": [{}],
            "args": {"init_from": "gpt2", "prefix_len": 2}, "config": {"n_layer": 1}}


def structure(value):
    """The shape of a checkpoint: keys, types, tensors' dtypes and shapes (not their values)."""
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [structure(v) for v in value]
    if isinstance(value, torch.Tensor):
        return (value.dtype, tuple(value.shape))
    return type(value)


@pytest.mark.parametrize("edit,message", [
    (lambda c: [c], "holds a list, not a dict"),
    (lambda c: {k: v for k, v in c.items() if k != "rng"}, "lacks rng"),
    (lambda c: {**c, "rng": [torch.zeros(3, dtype=torch.uint8)]}, "its rng is not one generator state per process"),
    (lambda c: {**c, "device_rng": [{"tpu": torch.zeros(3, dtype=torch.uint8)}]},
     "its device_rng is not one accelerator generator state"),
    (lambda c: {**c, "run_id": 7}, "its run_id is not a run id"),
    (lambda c: {**c, "iter": "3"}, "its iter is not a count of iterations"),
    (lambda c: {**c, "trained": {"table": [1.0]}}, "its trained is not a state dict of tensors"),
    (lambda c: {**c, "optimizer": {"state": {}}}, "its optimizer is not an optimizer's state dict"),
    (lambda c: {**c, "args": {"prefix_len": 2}}, "its args is not the run's settings"),
])
def test_a_checkpoint_that_train_py_did_not_write_is_one_sentence(tmp_path, edit, message):
    from runs.checkpoint import read_training_checkpoint
    torch.save(edit(small_checkpoint()), tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=message):
        read_training_checkpoint(tmp_path / "ckpt.pt")


def test_training_checkpoint_mutations(scratch):
    """What resume does with a damaged ckpt.pt: read it, then put its tensors into the method its settings build
    (a damaged tensor name only shows there)."""
    from runs.checkpoint import read_training_checkpoint, restore_training_state
    from prefix.tuning import PrefixTuning

    def read_training_checkpoint_and_restore(path):
        checkpoint = read_training_checkpoint(path)
        method = PrefixTuning(TINY, 2, mid_dim=4)
        restore_training_state(path, checkpoint, method, torch.optim.AdamW(method.parameters()))
        return checkpoint
    path = scratch / "ckpt.pt"
    torch.save(small_checkpoint(), path)
    original, data = structure(read_training_checkpoint(path)), path.read_bytes()
    rng, refused = random.Random(SEED), 0
    for _ in range(400):
        kind = rng.randrange(3)
        path.write_bytes(data[:rng.randrange(len(data))] if kind == 0 else
                         flip_bit(data, rng) if kind == 1 else data + bytes(rng.randrange(1, 30)))
        loaded = loads(read_training_checkpoint_and_restore, path)
        if isinstance(loaded, UserError):
            refused += 1
        else:
            assert structure(loaded) == original
    assert refused > 100
