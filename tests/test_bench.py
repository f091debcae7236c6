"""bench.py and bench_peft.py: the useful-FLOP count against a hand count, quick runs of our side and of the comparison
with PEFT (no timing asserted), one-sentence errors."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench_peft
from bench import main
from benchmarks.work import training_step_flops
from conftest import DEVICES, run_main
from model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["training step, s", "training tokens/s", "training peak memory, MiB", "greedy decoding tokens/s",
        "beam-2 decoding tokens/s", "useful GFLOP/s in training", "matmul peak GFLOP/s", "useful / matmul peak"]


def test_useful_flops_equal_a_hand_count():
    """2 blocks, C = 4 (MLP 16), vocab 10; one row of 3 tokens, the last supervised; prefix 2; prefix MLP 5."""
    config = GPTConfig(n_layer=2, n_head=1, n_embd=4, vocab_size=10, block_size=16)
    # a block's weights per token: q, k, v 48, output 16, MLP 64 + 64; a multiply-add is 2 FLOPs.
    # bottom block: every token; queries see 2+1, 2+2, 2+3 keys, 12 pairs × (QKᵀ + AV) × 2·4
    bottom_forward = 3 * 2 * 192 + 12 * 2 * 8                   # 1344
    bottom_backward = 3 * 2 * (16 + 64 + 64) + 2 * 12 * 2 * 8   # no gradient into the frozen embeddings: 1248
    # top block: K, V for every token, the rest only at the supervised last one, which sees 5 keys
    top_forward = 3 * 2 * 32 + 2 * (16 + 16 + 64 + 64) + 5 * 2 * 8    # 592
    top_backward = 3 * 2 * 32 + 2 * (16 + 16 + 64 + 64) + 2 * 5 * 2 * 8  # 672
    lm_head = 2 * (2 * 4 * 10)                                   # one supervised position, forward and backward
    prefix_mlp = 3 * 2 * 2 * (4 * 5 + 5 * 2 * 2 * 4)             # 2 rows through 4 → 5 → 16, backward twice
    expected = bottom_forward + bottom_backward + top_forward + top_backward + lm_head + prefix_mlp
    assert training_step_flops(config, 1, seq_len=3, supervised=1, prefix_len=2, mid_dim=5) == expected == 5216
    assert training_step_flops(config, 3, 3, 1, 2, 5) == 3 * (expected - prefix_mlp) + prefix_mlp


def run(script_main, *flags) -> str:
    done = run_main(script_main, "--quick", *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_our_side_prints_every_row_and_no_target():
    out = run(main)
    for row in ROWS:
        assert row in out
    assert "target" not in out and "peft" not in out.lower()


def test_full_weights_prints_the_training_rows_only():
    out = run(main, "--full_weights")
    assert "full-weight training 2 × 16 tokens, loss on the last 8; every weight trains" in out
    for row in ROWS[:3]:
        assert row in out
    assert "decoding" not in out


@pytest.mark.slow  # writes and loads a checkpoint in a process of its own
def test_loading_prints_the_peak_rss_of_loading_a_checkpoint_of_the_models_shape():
    out = run(main, "--loading")
    assert out.startswith("loading a ") and "(2 layers, 64 wide, vocab 512, random weights): peak RSS " in out
    assert out.rstrip().endswith("x the checkpoint's size") and "training" not in out


@pytest.mark.slow  # one process per side, each timing its steps
@pytest.mark.parametrize("device", DEVICES)
def test_bench_peft_runs_both_sides_and_prints_the_ratios(device):
    pytest.importorskip("peft")
    out = run(bench_peft.main, "--device", device)  # --quick: one process per side
    assert "run 1/1 ours:" in out and "run 1/1 peft:" in out
    table = out[out.index("ours against peft"):]
    for row in ROWS:
        assert row in table
    ratios = [line.rsplit("   ", 1)[1] for line in table.splitlines() if line.endswith(("x faster", "x the memory"))]
    assert len(ratios) == 5 and ratios[2].endswith("x the memory")
    assert "target" not in out


BAD_WORK = [  # both scripts share the flags that say what is measured
    (["--supervised", "64"], "--supervised 64 must be below --seq_len 64"),
    (["--n_head", "5"], "--n_embd 768 must be a multiple of --n_head 5"),
    (["--prefix_len", "1000"], "more than --block_size 1024 positions"),
]


@pytest.mark.parametrize("script, flags, says", [
    *[(script, flags, says) for script in (main, bench_peft.main) for flags, says in BAD_WORK],
    (main, ["--compare", "peft"], "unrecognized arguments: --compare peft"),  # the comparison is bench_peft.py's
    (bench_peft.main, ["--repeats", "0"], "--repeats must be a positive integer, got 0"),
])
def test_a_bad_flag_is_one_sentence_and_exit_2(script, flags, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        script(flags)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


@pytest.mark.slow  # times training steps in a process of its own
def test_the_side_by_side_timer_measures_the_checkout_it_is_run_in(tmp_path):
    """scripts/time_full_weight_step.py imports the GPT of the current directory, not its own checkout's."""
    for package in ("common", "model"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").touch()
    (tmp_path / "common" / "memory.py").write_text("def reuse_freed_memory(): pass\n")
    (tmp_path / "model" / "__init__.py").write_text("raise ImportError('the other checkout')\n")
    script = ROOT / "scripts" / "time_full_weight_step.py"
    elsewhere = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert "the other checkout" in elsewhere.stderr
    here = subprocess.run([sys.executable, str(script), "bfloat16"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert here.returncode == 0 and re.fullmatch(r"bfloat16: [\d,]+ tokens/s\n", here.stdout), here.stderr
