"""Where the attention goes: how much each layer's heads attend to the prefix, the table and the text so far.

    python -m prefix.attention --out_dir out --start "name : Aromi | Type : coffee shop | area : city centre"

It loads the run as sample.py does, decodes the table greedily, then reads the table and that text once more with
every layer's attention probabilities recorded: softmax(q K'ᵀ / √d) over K' = [P_K ; K] (§4.2). The model's
attention runs on SDPA, which does not return them, so they are recomputed here from each attention call's own
queries, keys and mask; the training and decoding paths are left as they are. The figure (a PNG) is drawn for the
queries that write the text (the separator <|endoftext|> and each generated token): per layer and head, the share
of their attention on the prefix, on the table and on the text written so far; and per layer, the attention each
key position receives, averaged over the heads. Needs matplotlib (pip install matplotlib).
"""
import functools
import inspect
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from common import UserError, exit_on_user_error
from common.cli import ArgumentParser, check_ranges, pick_device
from common.figures import pyplot, save_png
from data import prompt_ids
from model import GPT
from model.cpu_kernels import use_cpu_kernels
from model.generate import generate
from model.tokenizer import NEWLINES
from prefix.tuning import PrefixTuning
from runs import find_trained

SEGMENTS = ("prefix", "table", "text")  # what a key is: a trained position, the input, or text written so far


@contextmanager
def recorded_attention(gpt: GPT) -> Iterator[list[list[Tensor]]]:
    """While open, each call of a block's attention appends its probabilities (B, n_head, queries, keys) to that
    layer's list."""
    calls = [[] for _ in gpt.transformer.h]
    hooks = [block.attn.register_forward_hook(functools.partial(_record, calls[i]), with_kwargs=True)
             for i, block in enumerate(gpt.transformer.h)]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def _record(calls: list[Tensor], attn, args, kwargs, output) -> None:
    call = inspect.signature(attn.forward).bind(*args, **kwargs).arguments
    calls.append(attention_probabilities(attn, call["x"], call["mask"], keys=output[1][0], queries=output[0].size(1)))


def attention_probabilities(attn, x: Tensor, mask: Tensor | None, keys: Tensor, queries: int) -> Tensor:
    """softmax(q K'ᵀ / √d) of one attention call: (B, n_head, queries, L + T).

    x: the call's input (B, T, C), whose last `queries` positions asked queries; keys: its K' = [P_K ; K]
    (B, n_head, L + T, head_dim); mask: its boolean mask, True where a query may look, or None for the model's
    causal default (each query sees every key up to its own).
    """
    B, T, C = x.shape
    q = attn.c_attn(x)[:, T - queries:, :C]
    q = q.reshape(B, queries, -1, keys.size(-1)).transpose(1, 2)
    scores = q @ keys.transpose(-2, -1) / math.sqrt(keys.size(-1))
    if mask is None:  # query i sits at key index L + i (L = the keys before x)
        L = keys.size(2) - T
        mask = torch.arange(keys.size(2), device=x.device) <= L + torch.arange(T - queries, T, device=x.device)[:, None]
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def key_order(placement: str, prefix_len: int, prompt: list[int], text: list[int]) -> list[tuple[str, int | None]]:
    """Each key, in the order of the model's K': (its segment, its token; None for a trained position)."""
    trained = [("prefix", None)] * prefix_len
    table, written = [("table", t) for t in prompt], [("text", t) for t in text]
    if placement == "infix":  # [x ; INFIX ; y]: the infix sits before the separator that ends the prompt
        return table[:-1] + trained + table[-1:] + written
    return trained + table + written


@torch.no_grad()
def text_attention(gpt: GPT, method: PrefixTuning, prompt: list[int], text: list[int]) -> Tensor:
    """The attention of the queries that write `text` after `prompt` (the separator and each text token):
    (n_layer, n_head, len(text) + 1, keys), keys in key_order's order."""
    device = gpt.lm_head.weight.device
    cache, rest, _ = method.start_decoding(gpt, torch.tensor([prompt], device=device), None)
    rest = torch.cat([rest, torch.tensor([text], dtype=torch.long, device=device)], 1)
    with recorded_attention(gpt) as calls:
        gpt(rest, cache=cache)
    return torch.stack([layer[-1][0, :, -(len(text) + 1):] for layer in calls])


def segment_shares(probabilities: Tensor, segments: list[str]) -> Tensor:
    """The mean share of attention on each of SEGMENTS: (n_layer, n_head, 3), averaged over the queries."""
    kinds = torch.tensor([SEGMENTS.index(s) for s in segments], device=probabilities.device)
    per_key = probabilities.mean(2)
    return torch.stack([per_key[..., kinds == k].sum(-1) for k in range(len(SEGMENTS))], -1)


def figure(probabilities: Tensor, keys: list[tuple[str, int | None]], tokenizer, title: str):
    """Above: the share on prefix, table and text per layer and head. Below: each key's attention per layer."""
    plt = pyplot()
    segments = [segment for segment, _ in keys]
    shares = segment_shares(probabilities, segments).cpu()
    n_layer, n_head = shares.shape[:2]
    fig = plt.figure(figsize=(max(8, 0.2 * len(keys) + 2), 3.5 + 0.4 * n_layer), layout="constrained")
    grid = fig.add_gridspec(2, len(SEGMENTS), height_ratios=(1, 1))
    top = [fig.add_subplot(grid[0, column]) for column in range(len(SEGMENTS))]
    for column, (ax, name) in enumerate(zip(top, SEGMENTS)):
        image = ax.imshow(shares[..., column], vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set(title=f"share on the {name}" + (" so far" if name == "text" else ""), xlabel="head", ylabel="layer",
               xticks=range(n_head), yticks=range(n_layer))
        if n_layer * n_head <= 48:  # small enough to read each cell's number
            for layer in range(n_layer):
                for head in range(n_head):
                    value = float(shares[layer, head, column])
                    ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 0.5 else "white")
    fig.colorbar(image, ax=top, label="share")
    ax = fig.add_subplot(grid[1, :])
    fig.colorbar(ax.imshow(probabilities.mean((1, 2)).cpu(), cmap="magma", aspect="auto"), ax=ax,
                 label="probability")
    labels = [f"P{i + 1}" if token is None else tokenizer.decode([token]).strip() or "␣" for i, (_, token) in
              enumerate(keys)]
    ax.set_xticks(range(len(keys)), labels, rotation=90, fontsize=7)
    ax.set(yticks=range(n_layer), ylabel="layer", title="attention on each key, mean over heads and writing queries")
    for i in range(1, len(keys)):
        if segments[i] != segments[i - 1]:
            ax.axvline(i - 0.5, color="white", linewidth=1.5)
    fig.suptitle(title, fontsize=9)
    return fig


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m prefix.attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="the training run (a prefix, or one of its ablations)")
    p.add_argument("--start", required=True, help='one table, e.g. "name : Aromi | Type : pub"')
    p.add_argument("--prefix", default="final", choices=["final", "best"], help="which export of the run")
    p.add_argument("--peft_adapter", default=None, help="look at this HF PEFT prefix-tuning adapter instead of a run")
    p.add_argument("--init_from", default=None, help="the base GPT-2 (default: the one the prefix was trained on)")
    p.add_argument("--max_new_tokens", type=int, default=40, help="greedy text written before looking")
    p.add_argument("--output", default=None, help="the PNG to write (default: OUT_DIR/attention.png)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    args = p.parse_args(argv)
    if not args.start.strip() or args.start.startswith("FILE:"):
        raise UserError('--start takes one table, such as "name : Aromi | Type : pub"')
    check_ranges(args, positive=("max_new_tokens",))
    args.output = Path(args.output or Path(args.out_dir) / "attention.png")
    if args.output.is_dir() or not args.output.parent.is_dir():
        raise UserError(f"--output {args.output} must name a file in an existing directory")
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    pyplot()  # a missing matplotlib is said before the model loads
    device = pick_device(args.device)
    trained = find_trained(args.out_dir, args.prefix, args.peft_adapter)  # the run, found as sample.py finds it
    gpt, method, tokenizer = trained.load(args.init_from, device)
    use_cpu_kernels(gpt, method)
    if not isinstance(method, PrefixTuning):
        raise UserError(f"{args.out_dir} trained --tuning_mode {trained.settings.get('tuning_mode')}, which has no prefix "
                        f"to look at; prefix.attention draws a prefix run's attention")
    eot = tokenizer.eot_token
    prompt = prompt_ids(tokenizer, args.start.strip())
    cache, idx, mask = method.start_decoding(gpt, torch.tensor([prompt], device=device), None)
    text = generate(gpt, idx, args.max_new_tokens, cache=cache, attention_mask=mask, temperature=0, eos_id=eot,
                    banned_ids=NEWLINES)[0].tolist()
    text = text[:text.index(eot)] if eot in text else text
    probabilities = text_attention(gpt, method, prompt, text)
    keys = key_order(method.placement, method.prefix_len, prompt, text)
    shares = segment_shares(probabilities, [segment for segment, _ in keys]).mean(1)
    print(f"{args.start.strip()}\n  -> {tokenizer.decode(text).strip()}")
    for layer, (prefix, table, written) in enumerate(shares.tolist()):
        print(f"layer {layer}: prefix {prefix:.0%}, table {table:.0%}, text so far {written:.0%} (mean over heads)")
    title = f"{args.out_dir}: {method.placement} of {method.prefix_len}, {len(text)} greedy tokens"
    print(f"wrote {save_png(figure(probabilities, keys, tokenizer, title), args.output)}")


if __name__ == "__main__":
    main()
