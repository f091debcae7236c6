"""What bench.py and bench_peft.py measure: the model (random weights, GPT-2 small by default), the batch, our
prefix-tuning's training step and decoding, the step's useful FLOPs, and the header and cells of their reports."""
import torch

from common import UserError
from common.cli import ArgumentParser, autocast, check_ranges
from model import GPT, GPTConfig
from model.cpu_kernels import use_cpu_kernels
from model.generate import beam_search, generate
from prefix import PrefixTuning, freeze

# --quick: defaults for a tiny model and a few iterations (flags given explicitly still win)
QUICK = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=128, batch_size=2, seq_len=16, supervised=8,
             prefix_len=4, mid_dim=32, warmup=1, steps=2, new_tokens=4, beams=2, matmul_size=256)


def work_parser(description: str) -> ArgumentParser:
    """The flags that say what is measured: the model, the work, the device (bench_peft.py shares them)."""
    p = ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny model and a few iterations, for tests: "
                   + " ".join(f"--{name} {value}" for name, value in QUICK.items()))
    g = p.add_argument_group("the model (random weights; GPT-2 small by default)")
    g.add_argument("--n_layer", type=int, default=12, help="blocks")
    g.add_argument("--n_head", type=int, default=12, help="attention heads")
    g.add_argument("--n_embd", type=int, default=768, help="width")
    g.add_argument("--vocab_size", type=int, default=50257, help="its last id is end-of-text")
    g.add_argument("--block_size", type=int, default=1024, help="positions")
    g = p.add_argument_group("the work")
    g.add_argument("--batch_size", type=int, default=8, help="rows, in training and in decoding")
    g.add_argument("--seq_len", type=int, default=64, help="tokens per training row")
    g.add_argument("--supervised", type=int, default=32, help="the loss is on this many last tokens of each row")
    g.add_argument("--prefix_len", type=int, default=10, help="prefix positions")
    g.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width")
    g.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    g.add_argument("--steps", type=int, default=5, help="timed training steps")
    g.add_argument("--new_tokens", type=int, default=32, help="tokens decoded per row")
    g.add_argument("--beams", type=int, default=5, help="beam search width")
    g.add_argument("--matmul_size", type=int, default=None,
                   help="n of the n×n×n peak matmul (default: 2048 on CPU, 8192 on a GPU)")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on a GPU that supports it, else float32")
    return p


def parse_work(p: ArgumentParser, argv=None):
    """Parse, with --quick's defaults where it is given, and refuse work that cannot run."""
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    check_ranges(args, positive=("n_layer", "n_head", "n_embd", "vocab_size", "batch_size", "supervised",
                                  "prefix_len", "mid_dim", "steps", "new_tokens", "beams", "matmul_size"),
                 at_least_zero=("warmup",))
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    if args.supervised >= args.seq_len:
        raise UserError(f"--supervised {args.supervised} must be below --seq_len {args.seq_len}: the tokens before "
                        f"the supervised ones are the decoding prompts")
    if args.prefix_len + max(args.seq_len, args.seq_len - args.supervised + args.new_tokens) > args.block_size:
        raise UserError(f"the prefix and the longest sequence need more than --block_size {args.block_size} positions")
    return args


def training_step_flops(c: GPTConfig, batch_size: int, seq_len: int, supervised: int, prefix_len: int,
                        mid_dim: int) -> int:
    """The useful FLOPs of one training step: what the math needs, not what any code happens to compute.

    Matmuls only (a multiply-add is 2 FLOPs; biases, norms, activations, softmaxes and AdamW are left out).
    Per row of T = seq_len tokens, S = supervised of them with targets, P = prefix_len:
      forward   each block's q, k, v, output and MLP projections for every token; attention QKᵀ and AV over
                the keys each query may see (the P prefix keys and the tokens up to itself; masked pairs are
                not counted); the LM head at the S supervised positions only. The top block's output is read
                only there, so elsewhere it needs just the keys and values.
      backward  the GPT is frozen: no weight gradients, only gradients of activations, so one matmul per
                forward projection (dX = dY·Wᵀ) and two per attention matmul (both operands are activations);
                none into the bottom block's projections, whose input is the frozen embedding. (The bottom
                block's attention is counted in full, though only its prefix keys and values need gradients:
                a negligible overcount.)
      prefix    P = MLP(P') once per step: its forward, and twice that backward (weights and inputs).
    """
    C, T, S, P = c.n_embd, seq_len, supervised, prefix_len
    kv, q = 2 * 2 * C * C, 2 * C * C  # per token: the K and V projections, the Q projection
    output_and_mlp = 2 * (C * C + 2 * C * (c.n_inner or 4 * C))

    def block(queries: range, bottom: bool) -> int:
        """Forward and backward of one block whose outputs are needed at these query positions."""
        projections = T * kv + len(queries) * q
        attention = 4 * C * sum(P + i + 1 for i in queries)
        forward = projections + len(queries) * output_and_mlp + attention
        backward = forward + attention - (projections if bottom else 0)
        return forward + backward

    blocks = sum(block(range(T) if layer < c.n_layer - 1 else range(T - S, T), bottom=layer == 0)
                 for layer in range(c.n_layer))
    lm_head = 2 * (2 * C * c.vocab_size * S)  # forward, and the gradient of its input
    prefix_mlp = 3 * 2 * P * (C * mid_dim + mid_dim * 2 * c.n_layer * C)
    return batch_size * (blocks + lm_head) + prefix_mlp


def model_config(args) -> GPTConfig:
    return GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                     block_size=args.block_size)


def random_batch(args, device):
    """Token ids (B, T), their next-token targets with only the last `supervised` kept, and the prompts: the
    first T - supervised tokens of each row. No token is the last id, which both sides use as end-of-text."""
    tokens = torch.randint(0, args.vocab_size - 1, (args.batch_size, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(0))
    idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
    targets[:, :args.seq_len - args.supervised] = -100
    return idx.to(device), targets.to(device), idx[:, :args.seq_len - args.supervised].to(device)


def our_side(args, device, dtype):
    config = model_config(args)
    gpt = freeze(GPT(config).to(device))
    prefix = PrefixTuning(config, args.prefix_len, args.mid_dim).to(device)
    use_cpu_kernels(gpt, prefix)
    optimizer = torch.optim.AdamW(prefix.parameters(), fused=True)
    idx, targets, prompts = random_batch(args, device)
    eos = args.vocab_size - 1

    def train_step():
        with autocast(device, dtype):
            loss = prefix.loss(gpt, idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def decode(beams: int, new_tokens: int):
        with autocast(device, dtype):
            cache, prompt, mask = prefix.start_decoding(gpt, prompts, None)
            if beams == 1:
                return generate(gpt, prompt, new_tokens, cache=cache, attention_mask=mask, temperature=0,
                                banned_ids=[eos])
            return beam_search(gpt, prompt, new_tokens, beams, cache=cache, attention_mask=mask, eos_id=eos,
                               banned_ids=[eos])
    return train_step, decode


ROWS = [  # key, label
    ("step_s", "training step, s"),
    ("train_tokens_per_s", "training tokens/s"),
    ("memory_mib", "training peak memory, MiB"),
    ("greedy_tokens_per_s", "greedy decoding tokens/s"),
    ("beam_tokens_per_s", "beam-{beams} decoding tokens/s"),
    ("useful_gflops", "useful GFLOP/s in training"),
    ("peak_gflops", "matmul peak GFLOP/s"),
    ("useful_share", "useful / matmul peak"),
]


def cell(key: str, x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0%}" if key == "useful_share" else f"{x:.3f}" if key == "step_s" else f"{x:,.1f}"


def describe(args, machine_name: str, work: str) -> list[str]:
    """The header of a report: the machine, the model, the work."""
    lines = [f"machine: {machine_name}",
             f"model:   {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, vocab {args.vocab_size}, "
             f"random weights",
             f"work:    {work}"]
    if args.quick:
        lines.append("--quick: a check that everything runs; the numbers mean nothing")
    return lines


def prefix_work(args) -> str:
    return (f"training {args.batch_size} × {args.seq_len} tokens, loss on the last {args.supervised}, prefix "
            f"{args.prefix_len}, MLP {args.mid_dim}; decoding {args.new_tokens} tokens after "
            f"{args.seq_len - args.supervised}, beams {args.beams}")
