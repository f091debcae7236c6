"""Generate text from tables with a trained prefix (or baseline), and score a dataset split the way the paper does.

    python sample.py --out_dir out --start "name : Aromi | Type : coffee shop | area : city centre"
    python sample.py --out_dir out --start FILE:tables.txt --output texts.txt
    python sample.py --out_dir out --split test               # beam 5 on E2E test, then its five metrics
    python sample.py --out_dir out --split test --hypotheses texts.txt   # score texts without decoding

The base GPT-2 defaults to the one the prefix was trained on; the prefix is the run's final export
(prefix.safetensors, what the authors decode), or its training checkpoint while the run is unfinished;
--prefix best takes prefix_best.safetensors. Baselines decode the same way from their exports
(tuned[_best].safetensors on the base GPT-2, or the fine-tuned model[_best]/). --split writes its texts,
references and scores under out_dir/eval/<dataset>-<split>/.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn

from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from common.progress import Progress
from data import DATASETS, SPLITS, TEXT_FORMS, check_text_form, load_examples, prompt_ids
from metrics import score_split, scores_table
from metrics.e2e_files import hypotheses_text, one_line, read_hypotheses, references_text
from model import GPT
from model.cpu_kernels import use_cpu_kernels
from model.generate import beam_search, generate, left_pad
from model.tokenizer import NEWLINES
from runs import find_trained

# transformers 3's clean_up_tokenization, in its order: the authors decode with clean_up_tokenization_spaces=True
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="the training run to sample from")
    p.add_argument("--prefix", default="final", choices=["final", "best"],
                   help="the run's export at the end of training (as the authors decode) or at its best val loss")
    p.add_argument("--init_from", default=None, help="the base GPT-2 (default: the one the prefix was trained on)")
    p.add_argument("--peft_adapter", default=None, help="decode with this HF PEFT prefix-tuning adapter (a directory) "
                   "instead of a run's prefix; the base GPT-2 is the one it names, or --init_from")
    p.add_argument("--start", default=None, help='a table, or "FILE:path" with one table per line')
    p.add_argument("--split", default=None, choices=SPLITS, help="decode a dataset split and score it")
    p.add_argument("--hypotheses", default=None, help="with --split: score this file's texts (line i for table i) "
                                                      "instead of decoding")
    p.add_argument("--dataset", default=None, choices=list(DATASETS), help="(default: the run's)")
    p.add_argument("--data_dir", default=None, help="a local copy of the dataset (default: the download)")
    p.add_argument("--e2e_text", default=None, choices=TEXT_FORMS, help="E2E references as released or as the "
                   "authors tokenized them, and texts cleaned up as they decode (default: the run's)")
    p.add_argument("--max_examples", type=int, default=None, help="decode only the first N tables of the split")
    p.add_argument("--num_beams", type=int, default=5, help="beam search width; 1 decodes greedily or samples")
    p.add_argument("--length_penalty", type=float, default=1.0,
                   help="beam score = sum log p / length ** this, the length counting the table (transformers 3.2)")
    p.add_argument("--min_length", type=int, default=5, help="no <|endoftext|> before table and text are this many "
                   "tokens long (transformers 3.2's min_length, which counts the table; the authors pass 5)")
    p.add_argument("--temperature", type=float, default=0.0, help="with --num_beams 1: 0 is greedy, >0 samples")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--top_p", type=float, default=None, help="sample from the nucleus of this probability")
    p.add_argument("--max_new_tokens", type=int, default=100, help="stop a text after this many tokens")
    p.add_argument("--ban_newlines", action=argparse.BooleanOptionalAction, default=True,
                   help="forbid GPT-2's newline tokens 198 and 628, as the paper's code does")
    p.add_argument("--batch_size", type=int, default=10, help="tables decoded together (left-padded)")
    p.add_argument("--output", default=None, help="write the texts here, one per line")
    p.add_argument("--coco", action=argparse.BooleanOptionalAction, default=True,
                   help="also METEOR (E2E, WebNLG, DART), ROUGE-L and CIDEr (E2E) (needs pycocoevalcap and Java)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                   help="float32 as the authors decode (beams ranked on bfloat16 logits can differ); auto: bfloat16 "
                        "autocast on a GPU that has it")
    p.add_argument("--seed", type=int, default=1337, help="for sampling")
    args = p.parse_args(argv)
    if (args.start is None) == (args.split is None):
        raise UserError("give either --start (tables to generate from) or --split (a dataset split to score)")
    if args.hypotheses is not None and args.split is None:
        raise UserError("--hypotheses scores the texts of a dataset split; give --split too")
    check_ranges(args, positive=("num_beams", "max_new_tokens", "batch_size", "max_examples", "top_k"),
                 at_least_zero=("temperature", "min_length"))
    if args.output and (Path(args.output).is_dir() or not Path(args.output).parent.is_dir()):
        raise UserError(f"--output {args.output} must name a file in an existing directory")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top_p must be above 0 and at most 1, got {args.top_p}")
    if args.num_beams > 1 and (args.temperature > 0 or args.top_k or args.top_p):
        raise UserError("sampling options need --num_beams 1; beam search does not sample")
    return args


@torch.no_grad()
def decode(gpt: GPT, method: nn.Module, tokenizer, tables: list[str], args, device) -> list[str]:
    """One text per table, on one line, decoded in left-padded batches; a prefix seeds the KV cache."""
    eot = tokenizer.eot_token
    banned = NEWLINES if args.ban_newlines else ()
    generator = torch.Generator(device).manual_seed(args.seed)
    mixed_precision = autocast(device, pick_dtype(args.dtype, device))
    texts = []
    progress = Progress("decoding", len(tables), "tables")
    for start in range(0, len(tables), args.batch_size):
        chunk = [prompt_ids(tokenizer, table) for table in tables[start:start + args.batch_size]]
        idx, mask = left_pad(chunk, eot, device)
        with mixed_precision:
            cache, idx, mask = method.start_decoding(gpt, idx, mask)
            if args.num_beams > 1:
                outputs = beam_search(gpt, idx, args.max_new_tokens, args.num_beams, eos_id=eot, cache=cache,
                                      attention_mask=mask, length_penalty=args.length_penalty,
                                      min_length=args.min_length, banned_ids=banned)
            else:
                outputs = [row[:row.index(eot)] if eot in row else row for row in generate(
                    gpt, idx, args.max_new_tokens, cache=cache, attention_mask=mask, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, eos_id=eot, min_length=args.min_length, banned_ids=banned,
                    generator=generator).tolist()]
        texts += [one_line(tokenizer.decode(tokens).strip()) for tokens in outputs]
        progress.advance(len(outputs))
    progress.close()
    return texts


def read_tables(start: str) -> list[str]:
    """--start's tables: the one given, or one per line of FILE:path (text i is written for line i)."""
    if not start.startswith("FILE:"):
        if not start.strip():
            raise UserError("--start is empty; give a table such as \"name : Aromi | Type : pub\"")
        return [start]
    path = Path(start.removeprefix("FILE:"))
    try:
        tables = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"could not read the tables in {path} ({type(e).__name__})") from None
    if not tables:
        raise UserError(f"{path} holds no tables (one table per line is expected)")
    if "" in tables:
        raise UserError(f"line {tables.index('') + 1} of {path} is blank; give one table on every line, since "
                        f"output line i is the text for input line i")
    return tables


def as_the_authors_decode(text: str) -> str:
    """A generated text as the authors' run_generation.py writes it: cleaned up, and "Error" when empty."""
    for spaced, joined in CLEAN_UP:
        text = text.replace(spaced, joined)
    return text.strip() or "Error"


def write_evaluation(folder: Path, examples, texts: list[str], scores: dict, missing: str | None,
                     settings: dict) -> None:
    """The split's evaluation, reusable: tables.txt and hypotheses.txt (line i for table i), references.txt (the
    E2E scorer's format) and scores.json (every metric, and how the texts were made). Written as a whole."""
    summary = {"scores": scores, **({"missing": missing} if missing else {}), "tables": len(texts), **settings}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "tables.txt").write_text(hypotheses_text([ex.table for ex in examples]), encoding="utf-8")
        (tmp / "hypotheses.txt").write_text(hypotheses_text(texts), encoding="utf-8")
        (tmp / "references.txt").write_text(references_text([ex.references for ex in examples]), encoding="utf-8")
        (tmp / "scores.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


DECODING = ("prefix", "init_from", "num_beams", "length_penalty", "min_length", "max_new_tokens", "ban_newlines",
            "temperature", "top_k", "top_p", "seed", "dtype", "device", "batch_size", "max_examples")


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()
    trained = find_trained(args.out_dir, args.prefix, args.peft_adapter)
    settings, source = trained.settings, trained.source
    dataset = args.dataset or settings.get("dataset") or "e2e"
    text_form = args.e2e_text or settings.get("e2e_text") or "official"
    check_text_form(dataset, text_form)
    if args.split is None:
        tables = read_tables(args.start)
    else:
        if args.hypotheses is None and settings.get("dataset") not in (None, dataset):
            raise UserError(f"{source} was trained on {settings['dataset']}, not {dataset}; decoding it on "
                            f"{dataset} {args.split} is refused (drop --dataset to use {settings['dataset']})")
        examples = load_examples(dataset, args.split, args.data_dir or settings.get("data_dir"),
                                 text_form=text_form)[:args.max_examples]
        tables = [ex.table for ex in examples]
    if args.hypotheses is not None:
        texts = read_hypotheses(args.hypotheses, len(tables))
        made = {"texts_from": str(args.hypotheses)}
        print(f"{dataset} {args.split}: {len(texts)} tables, texts from {args.hypotheses}")
    else:
        device = pick_device(args.device)
        gpt, method, tokenizer = trained.load(args.init_from, device)
        use_cpu_kernels(gpt, method)
        texts = decode(gpt, method, tokenizer, tables, args, device)
        if text_form == "authors":
            texts = [as_the_authors_decode(text) for text in texts]
        made = {"decoded": str(source), "decoding": {name: getattr(args, name) for name in DECODING}
                | {"init_from": args.init_from or settings.get("init_from"), "device": str(device)}}
        if args.split is not None:
            print(f"{dataset} {args.split}: {len(texts)} tables, beam {args.num_beams}, decoded {source}")
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(hypotheses_text(texts), encoding="utf-8")
    if args.split is None:
        for table, text in zip(tables, texts):
            print(f"{table}\n  -> {text}")
        return
    scores, missing = score_split(dataset, examples, texts, args.coco)
    print(scores_table(dataset, scores, missing))
    folder = Path(args.out_dir) / "eval" / f"{dataset}-{args.split}"
    write_evaluation(folder, examples, texts, scores, missing, {"dataset": dataset, "split": args.split, **made})
    print(f"texts, references and scores in {folder}")


if __name__ == "__main__":
    main()
