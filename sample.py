"""Generate text from tables with a trained prefix (or baseline), and score a dataset split the way the paper does.

    python sample.py --out_dir out --start "name : Aromi | Type : coffee shop | area : city centre"
    python sample.py --out_dir out --start FILE:tables.txt --output texts.txt
    python sample.py --out_dir out --split test               # beam 5 on E2E test, then its five metrics

The base GPT-2 defaults to the one the prefix was trained on; the prefix is the run's exported one
(prefix_best.safetensors, or prefix.safetensors with --prefix final), or its training checkpoint when
nothing was exported yet. Baselines decode the same way from their exports (tuned[_best].safetensors on the
base GPT-2, or the fine-tuned model[_best]/).
"""
import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

import torch.nn as nn

from baselines import ChangesTheGPT, build_baseline, load_tuned
from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from data import DATASETS, SPLITS, category_subset, load_examples, prompt_ids
from metrics import bleu, coco_scores, e2e_scores, format_scores
from model import GPT
from model.generate import beam_search, generate, left_pad
from model import safetensors
from model.loading import checkpoint_dir
from model.tokenizer import get_tokenizer
from prefix import build_prefix, load_prefix, prefix_metadata
from prefix.artifact import read_training_checkpoint, restore_training_state
from prefix.peft_format import load_peft_adapter, peft_base_model

NEWLINES = (198, 628)  # GPT-2's "\n" and "\n\n": the paper's code bans them, one text is one line


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="the training run to sample from")
    p.add_argument("--prefix", default="best", choices=["best", "final"], help="which export of the run")
    p.add_argument("--init_from", default=None, help="the base GPT-2 (default: the one the prefix was trained on)")
    p.add_argument("--peft_adapter", default=None, help="decode with this HF PEFT prefix-tuning adapter (a directory) "
                   "instead of a run's prefix; the base GPT-2 is the one it names, or --init_from")
    p.add_argument("--start", default=None, help='a table, or "FILE:path" with one table per line')
    p.add_argument("--split", default=None, choices=SPLITS, help="decode a dataset split and score it")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="(default: the run's)")
    p.add_argument("--data_dir", default=None, help="a local copy of the dataset (default: the download)")
    p.add_argument("--max_examples", type=int, default=None, help="decode only the first N tables of the split")
    p.add_argument("--num_beams", type=int, default=5, help="beam search width; 1 decodes greedily or samples")
    p.add_argument("--length_penalty", type=float, default=1.0, help="beam score = sum log p / length ** this")
    p.add_argument("--temperature", type=float, default=0.0, help="with --num_beams 1: 0 is greedy, >0 samples")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--top_p", type=float, default=None, help="sample from the nucleus of this probability")
    p.add_argument("--max_new_tokens", type=int, default=100, help="stop a text after this many tokens")
    p.add_argument("--ban_newlines", action=argparse.BooleanOptionalAction, default=True,
                   help="forbid GPT-2's newline tokens 198 and 628, as the paper's code does")
    p.add_argument("--batch_size", type=int, default=10, help="tables decoded together (left-padded)")
    p.add_argument("--output", default=None, help="write the texts here, one per line")
    p.add_argument("--coco", action=argparse.BooleanOptionalAction, default=True,
                   help="also METEOR, ROUGE-L, CIDEr on E2E (needs pycocoevalcap and Java)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="as in train.py")
    p.add_argument("--seed", type=int, default=1337, help="for sampling")
    args = p.parse_args(argv)
    if (args.start is None) == (args.split is None):
        raise UserError("give either --start (tables to generate from) or --split (a dataset split to score)")
    check_ranges(args, positive=("num_beams", "max_new_tokens", "batch_size", "max_examples", "top_k"),
                 at_least_zero=("temperature",))
    if args.output and (Path(args.output).is_dir() or not Path(args.output).parent.is_dir()):
        raise UserError(f"--output {args.output} must name a file in an existing directory")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be above 0 and at most 1, got {args.top_p}")
    if args.num_beams > 1 and (args.temperature > 0 or args.top_k or args.top_p):
        raise UserError("sampling options need --num_beams 1; beam search does not sample")
    return args


def load_run(args, device) -> tuple[GPT, nn.Module, object, dict]:
    """The GPT, the run's trained method ready to decode, the tokenizer, and the run's training settings.

    The method is the run's export that --prefix names (else the other export, else the state in ckpt.pt): a
    prefix (no MLP), a baseline's tensors applied to the base GPT, or a whole fine-tuned GPT.
    """
    if args.peft_adapter:
        return load_peft_adapter_run(args, device)
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise UserError(f"there is no training run at {out_dir}; train one with train.py --out_dir {out_dir}")
    checkpoint = read_training_checkpoint(out_dir / "ckpt.pt") if (out_dir / "ckpt.pt").exists() else None
    order = ("_best", "") if args.prefix == "best" else ("", "_best")
    exports = [out_dir / f"{stem}{which}{suffix}" for which in order
               for stem, suffix in (("prefix", ".safetensors"), ("tuned", ".safetensors"), ("model", ""))]
    export = next((path for path in exports if path.exists()), None)
    if export is None and checkpoint is None:
        raise UserError(f"{out_dir} holds neither an export of a trained method nor ckpt.pt")
    if export is not None and export.is_dir():  # fine-tuning: a whole GPT-2, no base model needed
        gpt = GPT.from_pretrained(str(export)).to(device).requires_grad_(False)
        return gpt, ChangesTheGPT(gpt), get_tokenizer(export), checkpoint["args"] if checkpoint else {}
    if checkpoint:
        trained = checkpoint["args"]
    else:
        metadata = prefix_metadata(export) if export.name.startswith("prefix") else safetensors.load_metadata(export)
        trained = {"init_from": metadata.get("base_model")}
    directory = checkpoint_dir(args.init_from or trained["init_from"])
    gpt = GPT.from_pretrained(str(directory)).to(device).requires_grad_(False)
    mode = trained.get("tuning_mode", "prefix")
    if export is not None:
        method = load_prefix(export, gpt.config) if export.name.startswith("prefix") else load_tuned(export, gpt)
    else:
        if checkpoint["config"] != asdict(gpt.config):
            raise UserError(f"{out_dir / 'ckpt.pt'} was trained for {trained['init_from']}, not this model; "
                            f"load it with --init_from {trained['init_from']}")
        if mode == "prefix":
            method = build_prefix(trained["variant"], gpt, trained["prefix_len"], trained["mid_dim"],
                                  trained["reparam"], positions_from_zero=trained["positions_from_zero"])
        else:
            method = build_baseline(mode, gpt, trained)
        restore_training_state(out_dir / "ckpt.pt", checkpoint, method)
        method = method.export() if mode == "prefix" else method.requires_grad_(False).eval()
    return gpt, method.to(device), get_tokenizer(directory), trained


def load_peft_adapter_run(args, device) -> tuple[GPT, nn.Module, object, dict]:
    """What load_run returns, for a PEFT prefix-tuning adapter on the GPT-2 it names (or --init_from)."""
    base = args.init_from or peft_base_model(args.peft_adapter)
    directory = checkpoint_dir(base)
    gpt = GPT.from_pretrained(str(directory)).to(device).requires_grad_(False)
    prefix = load_peft_adapter(args.peft_adapter, gpt.config).to(device)
    return gpt, prefix, get_tokenizer(directory), {"init_from": base}


@torch.no_grad()
def decode(gpt: GPT, method: nn.Module, tokenizer, tables: list[str], args, device) -> list[str]:
    """One text per table, decoded in left-padded batches; a prefix seeds the KV cache."""
    eot = tokenizer.eot_token
    banned = NEWLINES if args.ban_newlines else ()
    generator = torch.Generator(device).manual_seed(args.seed)
    mixed_precision = autocast(device, pick_dtype(args.dtype, device))
    texts = []
    for start in range(0, len(tables), args.batch_size):
        chunk = [prompt_ids(tokenizer, table) for table in tables[start:start + args.batch_size]]
        idx, mask = left_pad(chunk, eot, device)
        with mixed_precision:
            cache, idx, mask = method.start_decoding(gpt, idx, mask)
            if args.num_beams > 1:
                outputs = beam_search(gpt, idx, args.max_new_tokens, args.num_beams, eos_id=eot, cache=cache,
                                      attention_mask=mask, length_penalty=args.length_penalty, banned_ids=banned)
            else:
                outputs = [row[:row.index(eot)] if eot in row else row for row in generate(
                    gpt, idx, args.max_new_tokens, cache=cache, attention_mask=mask, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, eos_id=eot, banned_ids=banned,
                    generator=generator).tolist()]
        texts += [tokenizer.decode(tokens).strip() for tokens in outputs]
        if sys.stderr.isatty():
            print(f"\rdecoded {len(texts)}/{len(tables)}", end="", file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return texts


def read_tables(start: str) -> list[str]:
    if not start.startswith("FILE:"):
        if not start.strip():
            raise UserError("--start is empty; give a table such as \"name : Aromi | Type : pub\"")
        return [start]
    path = Path(start.removeprefix("FILE:"))
    try:
        tables = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"could not read the tables in {path} ({type(e).__name__})") from None
    if not tables:
        raise UserError(f"{path} holds no tables (one table per line is expected)")
    return tables


def report(dataset: str, examples, texts: list[str], coco: bool) -> str:
    """The paper's metrics: E2E's five (Table 1), WebNLG's BLEU on seen (S), unseen (U) and all (A) categories."""
    if dataset == "webnlg":
        text_of = dict(zip(examples, texts))  # equal examples (same table and references) decode alike
        scores = {subset: bleu([text_of[ex] for ex in chosen], [ex.references for ex in chosen])
                  for subset in ("seen", "unseen", "all") if (chosen := category_subset(examples, subset))}
        return "  ".join(f"BLEU {subset} {value:.1f}" for subset, value in scores.items())
    references = [ex.references for ex in examples]
    scores = e2e_scores(texts, references, coco=False)
    try:
        if coco:
            scores |= coco_scores(texts, references)
    except UserError as e:  # METEOR, ROUGE-L and CIDEr are an optional extra
        return f"{format_scores(scores)}\n({e})"
    return format_scores(scores)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()
    device = pick_device(args.device)
    tables = read_tables(args.start) if args.start is not None else None
    gpt, method, tokenizer, trained = load_run(args, device)
    if args.split is not None:
        dataset = args.dataset or trained.get("dataset", "e2e")
        examples = load_examples(dataset, args.split, args.data_dir or trained.get("data_dir"))[:args.max_examples]
        tables = [ex.table for ex in examples]
    texts = decode(gpt, method, tokenizer, tables, args, device)
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    if args.split is None:
        for table, text in zip(tables, texts):
            print(f"{table}\n  -> {text}")
    else:
        print(f"{dataset} {args.split}: {len(texts)} tables, beam {args.num_beams}, trained in {args.out_dir}")
        print(report(dataset, examples, texts, args.coco))


if __name__ == "__main__":
    main()
