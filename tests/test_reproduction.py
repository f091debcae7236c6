"""README's reproduction commands set every one of the authors' settings that docs/reproduction.md's table lists."""
import re
import shlex

import pytest

from conftest import ROOT
from markdown import section

SECTION = section("README.md", "Reproducing the paper's tables")
TABLE = section("docs/reproduction.md", "This code vs the authors' code")


def commands(script: str) -> dict[str, list[str]]:
    """README's `python <script> ...` lines of the reproduction, keyed by dataset (from the --out_dir)."""
    found = {}
    for line in SECTION.splitlines():
        if not line.strip().startswith(f"python {script} "):
            continue
        words = shlex.split(line.strip())
        if words[:2] == ["python", script]:
            found[words[words.index("--out_dir") + 1].removeprefix("out-")] = words[2:]
    return found


# The settings of docs/reproduction.md's tables: XiangLi1999/PrefixTuning's, and for E2E's lr, batch, epochs and
# prefix length, and all of DART's (their code gives no DART command), the paper's appendix (Table 6).
AUTHORS = {"e2e": dict(init_from="gpt2-medium", prefix_len=5, learning_rate=8e-5, batch_size=10, epochs=5,
                       e2e_text="authors"),
           "webnlg": dict(init_from="gpt2-medium", prefix_len=5, learning_rate=5e-5, batch_size=5, epochs=5,
                          e2e_text="official"),
           "dart": dict(init_from="gpt2-medium", prefix_len=10, learning_rate=5e-5, batch_size=5, epochs=10,
                        e2e_text="official")}
BOTH = dict(tuning_mode="prefix", mid_dim=512, reparam=True, prefix_dropout=0.0, variant="prefix", warmup_iters=0,
            weight_decay=0.0, grad_clip=1.0, seed=101, dtype="float32", loss_reduction="sentence", grad_accum=1,
            max_iters=None, train_examples=None, init_text=None, positions_from_zero=False)


@pytest.mark.parametrize("dataset", list(AUTHORS))
def test_the_training_command_sets_every_setting_of_the_authors(dataset):
    from train import parse_args
    args = parse_args(commands("train.py")[dataset])
    assert args.dataset == dataset
    for name, value in {**AUTHORS[dataset], **BOTH}.items():
        assert getattr(args, name) == value, name
    # a baseline is the same line with --tuning_mode, and takes their GPT-2's own loss, the mean over tokens
    assert parse_args(commands("train.py")[dataset] + ["--tuning_mode", "finetune"]).loss_reduction == "token"


@pytest.mark.parametrize("dataset", list(AUTHORS))
def test_the_scoring_command_decodes_as_the_authors(dataset):
    from sample import parse_args
    args = parse_args(commands("sample.py")[dataset])
    assert args.split == "test" and args.prefix == "final" and args.dtype == "float32"
    assert (args.num_beams, args.length_penalty, args.min_length, args.max_new_tokens) == (5, 1.0, 5, 100)
    assert args.ban_newlines and args.e2e_text is None  # the text form is the run's


def test_the_optimizer_is_adamw_with_the_trainers_defaults():
    import inspect
    import torch
    defaults = inspect.signature(torch.optim.AdamW).parameters
    assert defaults["betas"].default == (0.9, 0.999) and defaults["eps"].default == 1e-8
    source = (ROOT / "train.py").read_text()
    assert "torch.optim.AdamW(" in source and "betas" not in source and "eps=" not in source  # left at those


def test_the_table_lists_every_setting_checked_here():
    rows = [line.split("|")[1].strip() for line in TABLE.splitlines() if line.startswith("| ") and "---" not in line]
    for setting in ("base model", "prefix length", "reparameterization", "optimizer", "schedule", "loss",
                    "gradient clipping", "precision", "seed", "E2E text", "which prefix is decoded", "decoding",
                    "post-processing", "E2E metrics", "WebNLG metrics", "DART metrics", "learning rate, batch, epochs"):
        assert setting in rows, setting
    assert all(re.fullmatch(r"\|.*\|", line) and line.count("|") - line.count("\\|") == 5
               for line in TABLE.splitlines() if line.startswith("|")), "a row with a stray | breaks the table"
