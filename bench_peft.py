"""Our prefix-tuning against transformers + PEFT on the same work: bench.py's measurements for both, and the ratios.

    python bench_peft.py                    # 5 fresh processes per side, run alternately: ours, peft, ours, ...
    python bench_peft.py --quick --repeats 1

The PEFT side is transformers' GPT2LMHeadModel (random weights, eval mode, frozen) with PEFT's prefix tuning
(prefix_projection: an MLP of --mid_dim, as ours) and transformers' generate, on bench.py's batch and flags; its
training uses the same fused AdamW and malloc setting as ours. Every measurement runs in a fresh process, so no side
inherits the other's memory or warm caches; the table gives each side's medians and how many times faster ours is
(for memory, how many times PEFT's it takes).
"""
import json
import statistics
import subprocess
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import torch

from benchmarks.timing import measure
from benchmarks.work import ROWS, cell, describe, our_side, parse_work, prefix_work, random_batch, work_parser
from common import UserError, exit_on_user_error
from common.cli import autocast, check_ranges


def parse_args(argv=None):
    p = work_parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, help="processes per side (default: 5, or 1 with --quick)")
    p.add_argument("--side", choices=["ours", "peft"],
                   help="measure this side once, in this process, and print its JSON (what each fresh process runs)")
    args = parse_work(p, argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    check_ranges(args, positive=("repeats",))
    if not (find_spec("transformers") and find_spec("peft")):
        raise UserError("measuring PEFT needs transformers and peft: pip install -r requirements-dev.txt")
    return args


def peft_side(args, device, dtype):
    """transformers' GPT2LMHeadModel (eval mode, frozen) with PEFT's prefix tuning and transformers' generate."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # their deprecations, not ours to act on
    eos = args.vocab_size - 1
    config = GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                        n_positions=args.block_size, bos_token_id=eos, eos_token_id=eos)
    prefix_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.prefix_len,
                                       prefix_projection=True, encoder_hidden_size=args.mid_dim)
    model = get_peft_model(GPT2LMHeadModel(config), prefix_config).to(device).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    idx, targets, prompts = random_batch(args, device)
    labels = idx.masked_fill(targets == -100, -100)  # transformers shifts labels itself: S targets per row too

    def train_step():
        with autocast(device, dtype):
            loss = model(input_ids=idx, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def decode(beams: int, new_tokens: int):
        with autocast(device, dtype):  # min_new_tokens bans eos to the end, as banned_ids does on our side
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                 num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 eos_token_id=eos, pad_token_id=eos)
        return out[:, prompts.size(1):]
    return train_step, decode


SIDES = dict(ours=our_side, peft=peft_side)

SAYS = dict(step_s="faster", train_tokens_per_s="faster", memory_mib="the memory", greedy_tokens_per_s="faster",
            beam_tokens_per_s="faster")  # the rows with a ratio, and what it says


def times(key: str, ours, peft) -> float | None:
    """How many times faster ours is; for memory, how many times PEFT's it takes."""
    if ours is None or peft is None:
        return None
    return peft / ours if key == "step_s" else ours / peft


def median(runs: list[dict], key: str):
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def report(args, runs: dict[str, list[dict]]) -> str:
    """Each side's medians, and ours against PEFT's."""
    medians = {side: {key: median(side_runs, key) for key, _ in ROWS} for side, side_runs in runs.items()}
    lines = describe(args, runs["ours"][0]["machine"], prefix_work(args))
    lines += [f"medians of {args.repeats} fresh process{'es' * (args.repeats > 1)} per side, run alternately", "",
              f"{'':32}{'ours':>12}{'peft':>12}   ours against peft"]
    for key, label in ROWS:
        ratio = times(key, medians["ours"][key], medians["peft"][key]) if key in SAYS else None
        says = "" if ratio is None else f"   {ratio:.2f}x {SAYS[key]}"
        lines.append(f"{label.format(beams=args.beams):32}{cell(key, medians['ours'][key]):>12}"
                     f"{cell(key, medians['peft'][key]):>12}{says}")
    return "\n".join(lines)


def run_side(side: str, argv: list[str]) -> dict:
    """One measurement in a fresh process: this script with --side."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--side", side],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        print(json.dumps(measure(args, SIDES[args.side])))
        return
    runs = {"ours": [], "peft": []}
    for i in range(args.repeats):
        for side, side_runs in runs.items():
            m = run_side(side, argv)
            side_runs.append(m)
            print(f"run {i + 1}/{args.repeats} {side:>4}: step {m['step_s']:.3f} s, greedy "
                  f"{m['greedy_tokens_per_s']:.1f} tokens/s, beam {m['beam_tokens_per_s']:.1f} tokens/s", flush=True)
    print("\n" + report(args, runs))


if __name__ == "__main__":
    main()
