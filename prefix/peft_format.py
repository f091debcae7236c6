"""HF PEFT's prefix-tuning adapter format: adapter_config.json + adapter_model.safetensors["prompt_embeddings"].

PEFT stores the projected prefix P (num_virtual_tokens × num_layers·2·token_dim) in the same row layout as
ours, so an exported prefix converts both ways without touching the numbers. PEFT keeps only P, which is
why a PEFT adapter can steer a model but cannot resume training with the MLP.

    python -m prefix.peft_format export out/ adapter_dir/      # a run's exported prefix as a PEFT adapter
    python sample.py --peft_adapter adapter_dir/ --start "..."  # decode with a PEFT adapter
"""
import json
from pathlib import Path

from common.cli import ArgumentParser
from common.errors import UserError, exit_on_user_error
from common.files import atomic_path
from model import safetensors
from model.gpt import GPTConfig
from prefix.artifact import load_prefix, prefix_metadata
from prefix.tuning import PrefixTuning

SIZES = ("num_layers", "num_attention_heads", "token_dim", "num_virtual_tokens")  # positive integers


def save_peft_adapter(prefix: PrefixTuning, directory, base_model: str) -> None:
    if prefix.positions_from_zero or prefix.placement != "prefix":
        raise UserError("PEFT only runs prefixes placed before the input whose real tokens start at position P")
    c, directory = prefix.config, Path(directory)
    config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": prefix.prefix_len,
              "token_dim": c.n_embd, "num_transformer_submodules": 1, "num_attention_heads": c.n_head,
              "num_layers": c.n_layer, "encoder_hidden_size": c.n_embd, "prefix_projection": False,
              "inference_mode": True, "base_model_name_or_path": base_model}
    safetensors.save_file({"prompt_embeddings": prefix.activations().detach().cpu().contiguous()},
                          directory / "adapter_model.safetensors", {"format": "pt"})
    with atomic_path(directory / "adapter_config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


def export_run(out_dir, adapter_dir, which: str = "best") -> Path:
    """Save a training run's exported prefix (prefix_best.safetensors, or prefix.safetensors for which="final"; the
    other when that one is missing) as a PEFT adapter for the base model it was trained on."""
    out_dir = Path(out_dir)
    order = ("_best", "") if which == "best" else ("", "_best")
    path = next((out_dir / f"prefix{w}.safetensors" for w in order if (out_dir / f"prefix{w}.safetensors").is_file()),
                None)
    if path is None:
        raise UserError(f"{out_dir} holds no exported prefix (prefix_best.safetensors or prefix.safetensors); "
                        f"train.py writes them at its evaluations")
    save_peft_adapter(load_prefix(path), adapter_dir, base_model=prefix_metadata(path)["base_model"])
    return path


def peft_base_model(directory) -> str:
    """The base model a PEFT adapter was trained on (its base_model_name_or_path)."""
    base = _read_config(Path(directory)).get("base_model_name_or_path")
    if not (isinstance(base, str) and base):
        raise UserError(f"{directory}/adapter_config.json names no base model; give it with --init_from")
    return base


def load_peft_adapter(directory, config: GPTConfig) -> PrefixTuning:
    directory = Path(directory)
    path = directory / "adapter_config.json"
    peft = _read_config(directory)
    missing = [key for key in SIZES if key not in peft]
    if missing:
        raise UserError(f"{directory}/adapter_config.json lacks {', '.join(missing)}")
    wrong = next((key for key in SIZES if type(peft[key]) is not int or not 0 < peft[key] < 1 << 31), None)
    if wrong:
        raise UserError(f"{path} sets {wrong} to {str(peft[wrong])[:40]}, not a positive integer")
    shape = (peft["num_layers"], peft["num_attention_heads"], peft["token_dim"])
    if shape != (config.n_layer, config.n_head, config.n_embd):
        raise UserError(f"{directory} was trained for a GPT with {shape[0]} layers, {shape[1]} heads and width "
                        f"{shape[2]}, not this one ({config.n_layer}, {config.n_head}, {config.n_embd})")
    tensors = safetensors.load_file(directory / "adapter_model.safetensors")
    P = tensors.get("prompt_embeddings")
    expected = (peft["num_virtual_tokens"], config.n_layer * 2 * config.n_embd)
    if tensors.keys() != {"prompt_embeddings"} or P.shape != expected or not P.is_floating_point():
        raise UserError(f"{directory}/adapter_model.safetensors holds no prompt_embeddings of the projected "
                        f"prefix's shape {expected} alone, in floating point")
    return PrefixTuning.holding(config, P)


def _read_config(directory: Path) -> dict:
    """A PEFT prefix-tuning adapter's adapter_config.json."""
    path = directory / "adapter_config.json"
    try:
        peft = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not UTF-8, not JSON
        raise UserError(f"{directory} holds no readable adapter_config.json") from None
    if not isinstance(peft, dict):
        raise UserError(f"{path} is a JSON {type(peft).__name__}, not an object of the adapter's settings")
    if peft.get("peft_type") != "PREFIX_TUNING":
        raise UserError(f"{directory} is a {str(peft.get('peft_type'))[:40]} adapter, not PREFIX_TUNING")
    return peft


@exit_on_user_error
def main(argv=None):
    p = ArgumentParser(description="Export a training run's prefix as a HF PEFT prefix-tuning adapter.")
    p.add_argument("command", choices=["export"], help="what to do (export is the one command)")
    p.add_argument("out_dir", help="the training run (train.py's --out_dir)")
    p.add_argument("adapter_dir", help="where the adapter goes (adapter_config.json, adapter_model.safetensors)")
    p.add_argument("--prefix", default="best", choices=["best", "final"], help="which export of the run")
    args = p.parse_args(argv)
    path = export_run(args.out_dir, args.adapter_dir, args.prefix)
    print(f"wrote {args.adapter_dir} (a PEFT prefix-tuning adapter) from {path}")


if __name__ == "__main__":
    main()
