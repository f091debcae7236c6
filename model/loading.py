"""GPT.from_pretrained: Hugging Face GPT-2 checkpoints (hub names or local directories) into our GPT."""
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import torch

from common.download import download
from common.errors import UserError
from common.files import atomic_path, cache_dir
from common.memory import peak_rss
from model import safetensors
from model.gpt import GPTConfig
from model.tokenizer import save_tokenizer_files

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_OWNER = "openai-community"  # where the hub keeps these repositories now; the bare names still lead there
REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")  # a branch, tag or commit, as git spells them
COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # old saves' causal-mask buffers, not weights


def load_pretrained(cls, name_or_dir: str, cache_root=None):
    directory = checkpoint_dir(name_or_dir, cache_root)
    config = read_config(directory)
    with torch.device("meta"):  # shapes without memory: no weight is made (or initialised) only to be overwritten
        model = cls(config)
    # assign: the checkpoint's tensors become the parameters, so loading holds the weights once, not twice
    model.load_state_dict(_hub_to_ours(model, read_weights(directory), source=directory), strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced wte's Parameter: tie the head to it again
    return model.eval()


def checkpoint_dir(name_or_dir: str, cache_root=None) -> Path:
    """A directory holding the checkpoint: the one given; for a hub name (gpt2 ... gpt2-xl, or the hub's own
    openai-community/gpt2 ..., either optionally @revision: a branch, tag or commit) its snapshot in the Hugging Face
    cache, else its files in our cache, fetched from the hub once.

    cache_root (or $PREFIX_TUNING_CACHE) moves our cache. As with the hub's own clients, $HF_HUB_CACHE or $HF_HOME
    move the Hugging Face cache, $HF_ENDPOINT the hub, $HF_TOKEN is sent as a bearer token, and $HF_HUB_OFFLINE=1
    forbids the network.
    """
    path = Path(name_or_dir)
    if path.is_dir():
        return path
    repo, at, revision = name_or_dir.partition("@")
    name = repo.removeprefix(f"{HUB_OWNER}/")
    if name not in HUB_NAMES or at and not (REVISION.fullmatch(revision) and ".." not in revision):
        raise UserError(f"{name_or_dir!r} is neither a checkpoint directory nor one of {', '.join(HUB_NAMES)} (or "
                        f"{HUB_OWNER}/gpt2 and so on), optionally followed by @revision (a branch, tag or commit)")
    revision = revision or "main"
    snapshot = hf_cache_snapshot(repo, revision)
    if snapshot is not None:
        return snapshot
    folder = name if revision == "main" else f"{name}@{revision.replace('/', '--')}"
    target = Path(cache_root, folder) if cache_root else cache_dir("models", folder)
    if all((target / file).exists() for file in HUB_FILES):
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):  # huggingface_hub's spellings
        raise UserError(f"HF_HUB_OFFLINE is set and {name_or_dir} is in neither the Hugging Face cache ({hf_cache()}) "
                        f"nor {target}; unset HF_HUB_OFFLINE to download it, or pass a checkpoint directory "
                        f"(--init_from path/to/{name})")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    token = os.environ.get("HF_TOKEN")
    hint = (f"without a network, download {', '.join(HUB_FILES)} of {name} elsewhere and pass "
            f"their directory instead (--init_from path/to/{name}), or copy them into {target}")
    for file in HUB_FILES:
        download(f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{file}", target / file,
                 f"{name_or_dir} {file}", hint, {"Authorization": f"Bearer {token}"} if token else None)
    return target


def hf_cache() -> Path:
    """The Hugging Face hub's cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (with
    $XDG_CACHE_HOME for ~/.cache when it is set), as huggingface_hub finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home, "hub").expanduser()


def hf_cache_snapshot(repo: str, revision: str) -> Path | None:
    """The snapshot of a GPT-2 repository at `revision` in the Hugging Face cache, under the name given or the other
    name the hub knows it by, if it holds a config and weights.

    huggingface_hub keeps models--<owner>--<name>/snapshots/<commit>/ (links into blobs/) and refs/<branch or tag>,
    a file holding the commit.
    """
    name = repo.removeprefix(f"{HUB_OWNER}/")
    for folder in dict.fromkeys((repo, name, f"{HUB_OWNER}/{name}")):
        models = hf_cache() / f"models--{folder.replace('/', '--')}"
        ref = models / "refs" / revision
        try:
            commit = revision if COMMIT.fullmatch(revision) else ref.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):  # no such branch or tag cached (or an unreadable ref)
            continue
        snapshot = models / "snapshots" / commit
        if COMMIT.fullmatch(commit) and (snapshot / "config.json").is_file() \
                and any((snapshot / weights).is_file() for weights in ("model.safetensors", "pytorch_model.bin")):
            return snapshot
    return None


# config.json's sizes: positive integers up to these caps (GPT-2 xl is 48 layers of 25 heads, width 1600), so a
# damaged config is refused in a sentence instead of building a model that does not fit in memory
SIZE_CAPS = {"n_layer": 1024, "n_head": 1024, "n_embd": 65536, "vocab_size": 1 << 24, "n_positions": 1 << 20}


def read_config(directory: Path) -> GPTConfig:
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory} has no config.json; a GPT-2 checkpoint directory holds config.json and "
                        f"model.safetensors (or pytorch_model.bin)") from None
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON
        raise UserError(f"{path} is not valid JSON; fetch the checkpoint again") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path} is a JSON {type(hf).__name__}, not an object of GPT-2's settings")
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{path} describes a {hf.get('model_type')!r} model, not GPT-2 (model_type 'gpt2')")
    unsupported = [k for k, bad in [("activation_function", hf.get("activation_function", "gelu_new")
                                     not in ("gelu_new", "gelu_pytorch_tanh")),
                                    ("scale_attn_weights", hf.get("scale_attn_weights", True) is not True),
                                    ("scale_attn_by_inverse_layer_idx", hf.get("scale_attn_by_inverse_layer_idx")),
                                    ("add_cross_attention", hf.get("add_cross_attention"))] if bad]
    if unsupported:
        raise UserError(f"{path} sets {', '.join(unsupported)} to values this GPT-2 does not implement")
    for key, cap in SIZE_CAPS.items():
        _require_size(path, key, hf.get(key), cap)
    if hf.get("n_inner") is not None:
        _require_size(path, "n_inner", hf["n_inner"], 4 * SIZE_CAPS["n_embd"])
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if type(eps) not in (int, float) or not 0 < eps < 1:
        raise UserError(f"{path} sets layer_norm_epsilon to {eps!r}, not a number between 0 and 1")
    if hf["n_embd"] % hf["n_head"]:
        raise UserError(f"{path} sets n_embd ({hf['n_embd']}) to no multiple of n_head ({hf['n_head']})")
    return GPTConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"], vocab_size=hf["vocab_size"],
                     block_size=hf["n_positions"], n_inner=hf.get("n_inner"), layer_norm_eps=eps)


def _require_size(path: Path, key: str, value, cap: int) -> None:
    if type(value) is not int or not 0 < value <= cap:
        raise UserError(f"{path} sets {key} to {value!r}, not a positive integer of at most {cap:,}")


def read_weights(directory: Path) -> Iterator[tuple[str, Callable[..., torch.Tensor]]]:
    """(name, read) for each tensor of the checkpoint, from model.safetensors or else pytorch_model.bin (never
    unpickling code): read() gives the tensor, read(transpose=True) a matrix's transpose, contiguous."""
    if (directory / "model.safetensors").exists():
        return safetensors.iter_file(directory / "model.safetensors")
    path = directory / "pytorch_model.bin"
    if not path.exists():
        raise UserError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a zoo of types for a damaged archive
        raise UserError(f"{path} could not be read ({type(e).__name__}); it may be truncated: "
                        f"delete it and fetch it again") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise UserError(f"{path} is not a state dict (names mapped to tensors); delete it and fetch it again")
    return ((name, lambda transpose=False, t=t: t.t().contiguous() if transpose and t.dim() == 2 else t)
            for name, t in state.items())


def _hub_to_ours(model, tensors: Iterator[tuple[str, Callable[..., torch.Tensor]]], source) -> dict[str, torch.Tensor]:
    """Hugging Face GPT-2 tensors under our GPT's names and in the dtype of `model`'s, checked against them (`model`
    may be on the meta device: only its names, shapes and dtypes are read).

    Keys may or may not start with "transformer."; Conv1D weights are stored (in, out) and are read transposed
    to nn.Linear's (out, in); the LM head is tied to wte, so a stored lm_head.weight is redundant (and, like the
    old saves' mask buffers, never read).
    """
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ours = {}
    for key, read in tensors:
        short = key.removeprefix("transformer.")
        if MASK_BUFFER.fullmatch(short) or short == "lm_head.weight":
            continue
        name, tensor = "transformer." + short, read(transpose=short.endswith(CONV1D_WEIGHTS))
        ours[name] = tensor.to(expected[name].dtype) if name in expected and tensor.is_floating_point() else tensor
    missing, unexpected = sorted(expected.keys() - ours.keys()), sorted(ours.keys() - expected.keys())
    if missing or unexpected:
        raise UserError(f"{source} is not a GPT-2 checkpoint of its config's shape "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [k for k in expected if expected[k].shape != ours[k].shape]
    if wrong:
        raise UserError(f"{source}: {wrong[0]} has shape {tuple(ours[wrong[0]].shape)}, its config implies "
                        f"{tuple(expected[wrong[0]].shape)}")
    not_float = [k for k in expected if not ours[k].is_floating_point()]
    if not_float:
        raise UserError(f"{source}: {not_float[0]} holds {str(ours[not_float[0]].dtype).removeprefix('torch.')}, "
                        f"not floating-point weights")
    return ours


def save_pretrained(model, directory, tokenizer=None, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as a Hugging Face GPT-2 checkpoint directory (config.json, model.safetensors, and with a
    tokenizer vocab.json and merges.txt) that GPT.from_pretrained, --init_from and transformers' GPT2LMHeadModel
    all load. `metadata` goes into model.safetensors' header (train.py's run id and data).

    The directory appears whole or not at all: it is written under a temporary name and renamed.
    """
    directory = Path(directory)
    c = model.config
    config = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=c.n_layer, n_head=c.n_head,
                  n_embd=c.n_embd, vocab_size=c.vocab_size, n_positions=c.block_size, n_ctx=c.block_size,
                  n_inner=c.n_inner, layer_norm_epsilon=c.layer_norm_eps, activation_function="gelu_new",
                  bos_token_id=c.vocab_size - 1, eos_token_id=c.vocab_size - 1, tie_word_embeddings=True)
    state = {key: tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor  # back to Conv1D's (in, out)
             for key, tensor in model.state_dict().items() if key != "lm_head.weight"}  # tied to wte
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        safetensors.save_file({k: v.detach().float().cpu() for k, v in state.items()}, tmp / "model.safetensors",
                              {"format": "pt", **(metadata or {})})
        if tokenizer is not None:
            save_tokenizer_files(tokenizer, tmp)
    return directory


def loading_peak_rss(directory) -> tuple[int, int]:
    """What loading costs in memory: (the peak RSS of a fresh interpreter that loads `directory` and runs a token
    through it, the same for a GPT-2 of a few KB), in bytes. Interpreter, torch and code paths are in both, so the
    difference is what the checkpoint's size costs; both first call reuse_freed_memory, as train.py and sample.py do.
    """
    from model.gpt import GPT
    load = ("from common.memory import reuse_freed_memory; reuse_freed_memory()\n"
            "import torch; from model import GPT\n"
            "with torch.no_grad(): GPT.from_pretrained({!r})(torch.zeros(1, 1, dtype=torch.long))")
    with tempfile.TemporaryDirectory() as tiny:
        save_pretrained(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=16, block_size=8)), Path(tiny, "gpt"))
        return peak_rss(load.format(str(directory))), peak_rss(load.format(str(Path(tiny, "gpt"))))
