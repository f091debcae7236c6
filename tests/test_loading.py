"""GPT.from_pretrained: hub layouts and formats, lean loading, errors, the Hugging Face cache and the download path
(loopback hub), tokenizer."""
from pathlib import Path

import pytest
import safetensors.torch
import torch

from common.errors import UserError
from hub_checkpoint import hf_cache_entry, random_hf_gpt2, write_checkpoint
from loopback import FileServer
from model import GPT, GPTConfig
from model.cpu_kernels import use_cpu_kernels
from model import safetensors as our_safetensors
from model.loading import checkpoint_dir, hf_cache
from model.tokenizer import from_files, get_tokenizer

SHAPES = [dict(n_layer=2, n_head=3, n_embd=24), dict(n_layer=3, n_head=5, n_embd=40),
          dict(n_layer=1, n_head=1, n_embd=16, n_inner=20), dict(n_layer=2, n_head=4, n_embd=32, n_positions=32)]


@torch.no_grad()
def assert_same_logits(ours: GPT, hf, vocab=101, T=16):
    idx = torch.randint(0, vocab, (3, T))
    torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    _, loss = ours(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(loss, hf(idx, labels=idx).loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN", "nn.Linear"])
def test_frozen_model_matches_transformers_on_either_cpu_kernel(tmp_path, onednn):
    """Frozen, as in prefix-tuning, the loss takes the sliced path where oneDNN is used (model/cpu_kernels.py)."""
    hf = random_hf_gpt2(**SHAPES[1], seed=3)
    ours = GPT.from_pretrained(str(write_checkpoint(hf, tmp_path, "hub", "safetensors"))).requires_grad_(False)
    if onednn:
        use_cpu_kernels(ours)
    assert_same_logits(ours, hf)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("layout", ["hub", "transformers"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_logits_match_transformers(tmp_path, shape, layout, fmt):
    hf = random_hf_gpt2(**shape, seed=len(str(shape)))
    ours = GPT.from_pretrained(str(write_checkpoint(hf, tmp_path, layout, fmt)))
    assert not ours.training
    assert_same_logits(ours, hf)


def test_hub_keys_include_mask_buffers_that_must_not_shadow_real_biases(tmp_path):
    hf = random_hf_gpt2()
    keys = safetensors.torch.load_file(str(write_checkpoint(hf, tmp_path) / "model.safetensors"))
    assert "h.0.attn.bias" in keys and "h.0.attn.c_attn.bias" in keys
    ours = GPT.from_pretrained(str(tmp_path))
    torch.testing.assert_close(ours.transformer.h[0].attn.c_attn.bias, hf.transformer.h[0].attn.c_attn.bias)


# ---- loading lean: the checkpoint's tensors become the parameters, read in place ---------------------------------

@pytest.mark.slow  # the peak of a fresh process, which writes a 150 MB checkpoint first
def test_loading_peaks_at_about_the_checkpoint_size(tmp_path, capsys):
    """Peak RSS of a fresh process that loads a 155 MB checkpoint and runs a token through it, minus the same for a
    checkpoint of a few KB (so the interpreter, torch and the code paths cancel): at most 1.3x the file's size."""
    from model.loading import loading_peak_rss, save_pretrained
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(n_layer=4, n_head=8, n_embd=512)), tmp_path / "gpt")  # GPT-2's vocabulary
    size = (tmp_path / "gpt" / "model.safetensors").stat().st_size
    assert size >= 100e6
    peak, tiny = loading_peak_rss(tmp_path / "gpt")
    with capsys.disabled():
        print(f"\nloading a {size / 2**20:.0f} MiB checkpoint: peak RSS {peak / 2**20:.0f} MiB, {tiny / 2**20:.0f} MiB "
              f"for a tiny one; the difference is {(peak - tiny) / size:.2f}x the checkpoint")
    assert peak - tiny <= 1.3 * size


def test_a_loaded_model_is_tied_whole_and_in_float32(tmp_path):
    hf = random_hf_gpt2(**SHAPES[1], seed=4)
    write_checkpoint(hf, tmp_path)
    for fmt in ("safetensors", "bin"):
        if fmt == "bin":
            write_checkpoint(hf.half(), tmp_path, fmt="bin")  # a float16 save becomes float32, as the model is built
            (tmp_path / "model.safetensors").unlink()
        ours = GPT.from_pretrained(str(tmp_path))
        assert ours.lm_head.weight is ours.transformer.wte.weight
        tensors = list(ours.parameters()) + list(ours.buffers())
        assert all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
    torch.testing.assert_close(ours.transformer.h[1].mlp.c_fc.weight, hf.transformer.h[1].mlp.c_fc.weight.t().float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_reading_a_matrix_transposed_in_slices(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(our_safetensors, "SLICE", 40)  # 40 bytes of rows at a time: several slices, the last one short
    tensors = {"m": (torch.randn(7, 3) * 100).to(dtype), "row": torch.randn(5).to(dtype),
               "wide": (torch.randn(2, 30) * 100).to(dtype), "empty": torch.zeros(0, 4, dtype=dtype)}
    our_safetensors.save_file(tensors, tmp_path / "x.safetensors")
    for name, read in our_safetensors.iter_file(tmp_path / "x.safetensors"):
        assert torch.equal(read(), tensors[name])
        transposed = read(transpose=True)
        assert transposed.is_contiguous() and torch.equal(transposed, tensors[name].t() if tensors[name].dim() == 2
                                                          else tensors[name])


# ---- errors a user can make or meet -------------------------------------------------------------------

def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path))


def test_config_that_is_not_gpt2(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="'bert' model, not GPT-2"):
        GPT.from_pretrained(str(tmp_path))


def test_config_with_unsupported_gpt2_options(tmp_path):
    hf = random_hf_gpt2()
    hf.config.scale_attn_by_inverse_layer_idx = True
    write_checkpoint(hf, tmp_path)
    with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx"):
        GPT.from_pretrained(str(tmp_path))


def test_directory_without_weights(tmp_path):
    write_checkpoint(random_hf_gpt2(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="neither model.safetensors nor pytorch_model.bin"):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("fmt,name", [("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin")])
def test_truncated_weights(tmp_path, fmt, name):
    write_checkpoint(random_hf_gpt2(), tmp_path, fmt=fmt)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        GPT.from_pretrained(str(tmp_path))


def test_weights_that_do_not_fit_the_config(tmp_path):
    write_checkpoint(random_hf_gpt2(n_embd=24), tmp_path)
    other = random_hf_gpt2(n_embd=48)
    other.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(UserError, match="has shape"):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_name():
    with pytest.raises(UserError, match="neither a checkpoint directory nor one of gpt2"):
        GPT.from_pretrained("gpt3")


# ---- safetensors without the package --------------------------------------------------------------------

def test_our_safetensors_round_trips_with_the_official_package(tmp_path):
    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
               "i64": torch.arange(7), "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3)}
    our_safetensors.save_file(tensors, tmp_path / "ours.safetensors", metadata={"format": "pt"})
    theirs = safetensors.torch.load_file(str(tmp_path / "ours.safetensors"))
    safetensors.torch.save_file(tensors, str(tmp_path / "theirs.safetensors"))
    ours = our_safetensors.load_file(tmp_path / "theirs.safetensors")
    for name, t in tensors.items():
        assert torch.equal(theirs[name], t) and torch.equal(ours[name], t) and ours[name].dtype == t.dtype


def test_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="not a safetensors file"):
        our_safetensors.load_file(tmp_path / "x.safetensors")


def test_a_missing_file_and_an_unknown_dtype_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="could not read"):
        our_safetensors.load_file(tmp_path / "missing.safetensors")
    header = b'{"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}'
    (tmp_path / "f8.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    with pytest.raises(UserError, match="F8_E4M3, which this reader does not know"):
        our_safetensors.load_file(tmp_path / "f8.safetensors")


# ---- downloading from the hub, against a loopback server -------------------------------------------------

@pytest.fixture
def hub(tmp_path, gpt2_dir, monkeypatch):
    hf = random_hf_gpt2(vocab_size=50257)
    write_checkpoint(hf, tmp_path / "hub" / "gpt2" / "resolve" / "main", tokenizer_dir=gpt2_dir)
    server = FileServer(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server, hf
    server.stop()


def test_download_then_cache_hit_without_the_server(hub, tmp_path):
    server, hf = hub
    model = GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
    assert_same_logits(model, hf, vocab=50257)
    assert sorted(p.name for p in (tmp_path / "cache" / "gpt2").iterdir()) == \
        ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert "/gpt2/resolve/main/model.safetensors" in server.requests
    server.stop()
    assert_same_logits(GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache"), hf, vocab=50257)
    assert get_tokenizer(tmp_path / "cache" / "gpt2").encode("Hello world") == [15496, 995]


def test_interrupted_download_is_detected_and_never_used(hub, tmp_path):
    server, hf = hub
    server.cut.add("model.safetensors")
    with pytest.raises(UserError, match="broke off"):
        GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
    left = sorted(p.name for p in (tmp_path / "cache" / "gpt2").iterdir())
    assert left == ["config.json"]  # no partial weights under any name
    server.cut.clear()
    assert_same_logits(GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache"), hf, vocab=50257)


def test_a_terminal_gets_a_progress_bar(hub, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
    assert "gpt2 model.safetensors [##############################]" in terminal.getvalue()


def test_cache_root_follows_the_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFIX_TUNING_CACHE", str(tmp_path / "elsewhere"))
    GPT.from_pretrained("gpt2")
    assert (tmp_path / "elsewhere" / "models" / "gpt2" / "model.safetensors").is_file()


def test_offline_with_nothing_cached_says_what_to_do(tmp_path, monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        with pytest.raises(UserError) as error:
            GPT.from_pretrained("gpt2", cache_dir=tmp_path)
    message = str(error.value)
    assert "could not download gpt2 config.json" in message and "--init_from path/to/gpt2" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence


def test_missing_file_on_the_hub(hub, tmp_path):
    server, _ = hub
    (server.root / "gpt2" / "resolve" / "main" / "merges.txt").unlink()
    with pytest.raises(UserError, match="could not download gpt2 merges.txt"):
        GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")


# ---- the Hugging Face cache and the hub's variables ----------------------------------------------------------

COMMIT, OTHER_COMMIT = "8bd2a0f6d9b5a6b2d2d0f3c2b4e5e6f7a8b9c0d1", "0f1e2d3c4b5a69788796a5b4c3d2e1f001234567"


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """An empty Hugging Face cache at $HF_HUB_CACHE, and a loopback hub at $HF_ENDPOINT that records requests."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    server = FileServer(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield tmp_path / "hf-cache", server
    server.stop()


def on_the_hub(server, repo: str, revision: str, model) -> None:
    """Serve `model`'s checkpoint as the hub does at <repo>/resolve/<revision>/, with stand-in tokenizer files."""
    directory = write_checkpoint(model, server.root / repo / "resolve" / revision)
    for name in ("vocab.json", "merges.txt"):
        (directory / name).write_text("not read when only the model loads")


def test_the_hugging_face_cache_serves_either_name_offline(hf, tmp_path, monkeypatch):
    cache, server = hf
    model = random_hf_gpt2(seed=7)
    snapshot = hf_cache_entry(cache, "openai-community/gpt2", write_checkpoint(model, tmp_path / "files"), COMMIT)
    huggingface_hub = pytest.importorskip("huggingface_hub")  # the library itself reads our fake cache as its own
    found = huggingface_hub.try_to_load_from_cache("openai-community/gpt2", "model.safetensors", cache_dir=cache)
    assert Path(found) == snapshot / "model.safetensors" and (snapshot / "model.safetensors").is_symlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("gpt2", "openai-community/gpt2", f"gpt2@{COMMIT}"):
        assert checkpoint_dir(name) == snapshot
        assert_same_logits(GPT.from_pretrained(name), model)
    assert server.requests == []


def test_a_revision_picks_its_snapshot_or_downloads_it_on_its_own(hf, tmp_path):
    cache, server = hf
    main, tagged = random_hf_gpt2(seed=1), random_hf_gpt2(seed=2)
    hf_cache_entry(cache, "gpt2", write_checkpoint(main, tmp_path / "main"), COMMIT)
    hf_cache_entry(cache, "gpt2", write_checkpoint(tagged, tmp_path / "tagged"), OTHER_COMMIT, refs=("v2",))
    assert_same_logits(GPT.from_pretrained("gpt2"), main)
    assert_same_logits(GPT.from_pretrained("openai-community/gpt2@v2"), tagged)
    assert_same_logits(GPT.from_pretrained(f"gpt2@{OTHER_COMMIT}"), tagged)
    assert server.requests == []
    on_the_hub(server, "gpt2", "v3", random_hf_gpt2(seed=3))  # not cached: fetched into our cache, beside main's
    assert_same_logits(GPT.from_pretrained("gpt2@v3", cache_dir=tmp_path / "ours"), random_hf_gpt2(seed=3))
    assert "/gpt2/resolve/v3/model.safetensors" in server.requests
    assert (tmp_path / "ours" / "gpt2@v3" / "model.safetensors").is_file()


def test_an_incomplete_snapshot_is_passed_over(hf, tmp_path):
    cache, server = hf
    snapshot = hf_cache_entry(cache, "gpt2", write_checkpoint(random_hf_gpt2(seed=1), tmp_path / "files"), COMMIT)
    (snapshot / "model.safetensors").resolve().unlink()  # an interrupted download: the link points at nothing
    model = random_hf_gpt2(seed=5)
    on_the_hub(server, "openai-community/gpt2-medium", "main", model)
    on_the_hub(server, "gpt2", "main", model)
    assert_same_logits(GPT.from_pretrained("gpt2", cache_dir=tmp_path / "ours"), model)
    assert_same_logits(GPT.from_pretrained("openai-community/gpt2-medium", cache_dir=tmp_path / "ours"), model)
    assert {"/gpt2/resolve/main/model.safetensors", "/openai-community/gpt2-medium/resolve/main/config.json"} \
        <= set(server.requests)


def test_offline_never_touches_the_network_and_says_so_in_one_sentence(hf, tmp_path, monkeypatch):
    cache, server = hf
    model = random_hf_gpt2(seed=6)
    on_the_hub(server, "gpt2", "main", model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as error:
        GPT.from_pretrained("gpt2", cache_dir=tmp_path / "ours")
    message = str(error.value)
    assert message.startswith("HF_HUB_OFFLINE is set and gpt2 is in neither the Hugging Face cache")
    assert str(cache) in message and "--init_from path/to/gpt2" in message
    assert message.count(". ") == 0 and "\n" not in message
    assert server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    GPT.from_pretrained("gpt2", cache_dir=tmp_path / "ours")  # online once, into our cache
    requests = len(server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert_same_logits(GPT.from_pretrained("gpt2", cache_dir=tmp_path / "ours"), model)
    assert len(server.requests) == requests


@pytest.mark.parametrize("token", ["hf_secret123", None])
def test_hf_token_is_sent_as_a_bearer_header(hf, tmp_path, monkeypatch, token):
    _, server = hf
    on_the_hub(server, "gpt2", "main", random_hf_gpt2())
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    GPT.from_pretrained("gpt2", cache_dir=tmp_path / "ours")
    assert len(server.request_headers) == 4
    assert [h.get("Authorization") for h in server.request_headers] == [token and f"Bearer {token}"] * 4


@pytest.mark.parametrize("name", ["openai-community/gpt3", "someone/gpt2", "gpt2@", "gpt2@../../etc", "gpt2@a b"])
def test_names_outside_the_hub_gpt2s_are_refused(name):
    with pytest.raises(UserError, match="neither a checkpoint directory nor one of gpt2"):
        GPT.from_pretrained(name)


def test_the_cache_is_where_huggingface_hub_looks(tmp_path, monkeypatch):
    """$HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub: the
    library's own answer, asked in a fresh process (it reads the environment once, on import)."""
    import os
    import subprocess
    import sys
    pytest.importorskip("huggingface_hub")
    settings = [{"HF_HUB_CACHE": tmp_path / "a"}, {"HF_HOME": tmp_path / "b"}, {"XDG_CACHE_HOME": tmp_path / "c"},
                {"HOME": tmp_path / "d"}]
    for setting in settings:
        for name in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HUGGINGFACE_HUB_CACHE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in setting.items():
            monkeypatch.setenv(name, str(value))
        theirs = subprocess.run([sys.executable, "-c", "from huggingface_hub import constants; "
                                 "print(constants.HF_HUB_CACHE)"], capture_output=True, text=True, env=os.environ,
                                check=True).stdout.strip()
        assert hf_cache() == Path(theirs), setting


class socket_closed_port:
    """A loopback port with nothing listening."""

    def __enter__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


# ---- tokenizer ----------------------------------------------------------------------------------------------

def test_tokenizer_from_checkpoint_files_equals_tiktoken(gpt2_dir, tmp_path):
    import tiktoken
    write_checkpoint(random_hf_gpt2(), tmp_path, tokenizer_dir=gpt2_dir)
    ours, reference = get_tokenizer(tmp_path), tiktoken.get_encoding("gpt2")
    text = " name : The Vaults | price : more than £ 30 <|endoftext|> Café  naïve\n\n 1234 it's"
    assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert ours.n_vocab == reference.n_vocab == 50257


def test_tokenizer_files_that_disagree(gpt2_dir, tmp_path):
    lines = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    (tmp_path / "merges.txt").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]), encoding="utf-8")
    with pytest.raises(UserError, match="do not describe the same"):
        from_files(gpt2_dir / "encoder.json", tmp_path / "merges.txt")


def test_tokenizer_offline_without_files_says_what_to_do(tmp_path, monkeypatch):
    import requests
    import tiktoken

    def offline(name):
        raise requests.ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match="TIKTOKEN_CACHE_DIR"):
        get_tokenizer(tmp_path)


# ---- writing checkpoints: save_pretrained, save_tokenizer_files, atomic_path for directories ------------------

@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]], ids=["plain", "n_inner"])
def test_save_pretrained_round_trips_and_transformers_loads_it(shape, tokenizer, tmp_path):
    from transformers import GPT2LMHeadModel
    hf = random_hf_gpt2(**shape, seed=5)
    ours = GPT.from_pretrained(str(write_checkpoint(hf, tmp_path / "original")))
    from model.loading import save_pretrained
    save_pretrained(ours, tmp_path / "saved", tokenizer)
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"config.json", "model.safetensors", "vocab.json",
                                                               "merges.txt"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    again = GPT.from_pretrained(str(tmp_path / "saved"))
    assert again.config == ours.config
    expected = ours.state_dict()
    assert again.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())
    theirs = GPT2LMHeadModel.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        assert_same_logits(again, theirs)
        assert_same_logits(again, hf)
    assert get_tokenizer(tmp_path / "saved").encode("name : Aromi") == tokenizer.encode("name : Aromi")


def test_save_pretrained_replaces_an_earlier_checkpoint_whole(tokenizer, tmp_path):
    from model.loading import save_pretrained
    first = GPT.from_pretrained(str(write_checkpoint(random_hf_gpt2(seed=1), tmp_path / "a")))
    second = GPT.from_pretrained(str(write_checkpoint(random_hf_gpt2(seed=2), tmp_path / "b")))
    save_pretrained(first, tmp_path / "out", tokenizer)
    (tmp_path / "out" / "stale.bin").write_text("from an older save")
    save_pretrained(second, tmp_path / "out", tokenizer)
    assert not (tmp_path / "out" / "stale.bin").exists()
    loaded = GPT.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(loaded.transformer.wte.weight, second.transformer.wte.weight)


def test_save_tokenizer_files_writes_the_hub_files_of_gpt2(gpt2_dir, tmp_path):
    import json

    import tiktoken
    from model.tokenizer import save_tokenizer_files
    save_tokenizer_files(tiktoken.get_encoding("gpt2"), tmp_path)
    written = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert written == json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
    merge_lines = lambda path: [line for line in path.read_text(encoding="utf-8").splitlines()
                                if line and not line.startswith("#version")]
    ours, theirs = merge_lines(tmp_path / "merges.txt"), merge_lines(gpt2_dir / "vocab.bpe")
    assert len(ours) == 50000 and ours == theirs  # every merge, in rank order
    reloaded = from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert reloaded.encode(" Café naïve £30") == tiktoken.get_encoding("gpt2").encode(" Café naïve £30")


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    from common.files import atomic_path
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "sub").mkdir()
    (target / "sub" / "deep.txt").write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
        (tmp / "nested").mkdir()
        (tmp / "nested" / "x.txt").write_text("x")
        assert (target / "old.txt").exists()  # the old one is there until the new one is complete
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["nested", "nested/x.txt", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left beside it


def test_atomic_path_keeps_the_old_directory_when_writing_fails(tmp_path):
    from common.files import atomic_path
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the half-written temporary directory is gone
    with pytest.raises(RuntimeError):  # and a failure before anything was written leaves nothing either
        with atomic_path(tmp_path / "new") as tmp:
            raise RuntimeError("early")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
