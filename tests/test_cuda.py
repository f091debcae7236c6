"""The CUDA path against the CPU path, on random-weight GPT-2-shaped models: float32 logits and greedy decoding,
bf16 autocast training, beam search, and train.py's resume after a SIGKILL with prefix dropout on.

Every test here is marked cuda and skips, with the reason, where torch sees no CUDA GPU (conftest.py).
scripts/gpu_check.sh runs them all (`python -m pytest -m cuda`), together with the CUDA variants of tests
parametrized over DEVICES elsewhere: the PEFT parity and the per-row PrefixBank (test_prefix.py) and
`bench_peft.py --device cuda --quick` (test_bench.py).
"""
import pytest
import torch

from common.cli import autocast
from conftest import on_device
from hub_checkpoint import random_hf_gpt2, write_checkpoint
from model import GPT, safetensors
from model.generate import beam_search, generate
from prefix import PrefixTuning, freeze

pytestmark = pytest.mark.cuda

V = 50257  # GPT-2's vocabulary: the LM head as wide as the real one
EOT = V - 1


@pytest.fixture(scope="module")
def cpu_gpt(tmp_path_factory):
    """GPT-2's architecture at a small size, loaded from a hub-layout checkpoint (LayerNorms far from 1 and 0)."""
    hf = random_hf_gpt2(n_layer=4, n_head=4, n_embd=64, vocab_size=V, n_positions=128, seed=2)
    return freeze(GPT.from_pretrained(str(write_checkpoint(hf, tmp_path_factory.mktemp("gpt2-shaped")))))


@pytest.fixture(scope="module")
def cuda_gpt(cpu_gpt):
    return on_device(cpu_gpt, "cuda")


@pytest.fixture(scope="module")
def prefix(cpu_gpt):
    """A prefix with its MLP, on CPU, in eval mode (no dropout): the same numbers on both devices."""
    torch.manual_seed(0)
    return PrefixTuning(cpu_gpt.config, 5, mid_dim=32).eval()


def prompts():
    """Two rows, the second left-padded by 3, and their attention mask."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, EOT, (2, 12), generator=g)
    mask = torch.ones_like(idx)
    mask[1, :3] = 0
    return idx.masked_fill(mask == 0, EOT), mask


def test_float32_logits_on_cuda_equal_the_cpus(cpu_gpt, cuda_gpt, prefix):
    idx, mask = prompts()
    with torch.no_grad():
        expected = cpu_gpt(idx)[0]
        torch.testing.assert_close(cuda_gpt(idx.cuda())[0].cpu(), expected, atol=1e-4, rtol=0)
        expected = cpu_gpt(idx, prefix=prefix(2), attention_mask=mask)[0]
        got = cuda_gpt(idx.cuda(), prefix=on_device(prefix, "cuda")(2), attention_mask=mask.cuda())[0].cpu()
    real = mask.bool()  # the outputs at padding are never read
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_bf16_autocast_training_loss_is_close_to_float32_and_its_gradients_finite(cuda_gpt):
    torch.manual_seed(0)
    trained = PrefixTuning(cuda_gpt.config, 5, mid_dim=32).to("cuda")  # in training mode, as train.py runs it
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, EOT, (4, 25), generator=g)
    idx, targets = tokens[:, :-1].cuda(), tokens[:, 1:].clone().cuda()
    targets[:, :12] = -100  # the loss on the text half, as in training
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        trained.zero_grad(set_to_none=True)
        with autocast(torch.device("cuda"), dtype):
            loss = trained.loss(cuda_gpt, idx, targets)
        loss.backward()
        assert loss.dtype == torch.float32
        assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in trained.parameters()), dtype
        losses[dtype] = loss.item()
    assert abs(losses[torch.bfloat16] - losses[torch.float32]) < 2e-2, losses


def test_greedy_float32_decoding_on_cuda_gives_the_cpus_tokens(cpu_gpt, cuda_gpt, prefix):
    idx, mask = prompts()
    expected = generate(cpu_gpt, idx, 16, prefix=prefix(1), attention_mask=mask, temperature=0)
    got = generate(cuda_gpt, idx.cuda(), 16, prefix=on_device(prefix, "cuda")(1), attention_mask=mask.cuda(),
                   temperature=0)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16-autocast"])
def test_beam_search_runs_on_cuda(cuda_gpt, prefix, dtype):
    idx, mask = prompts()
    with torch.no_grad(), autocast(torch.device("cuda"), dtype):  # bf16: sample.py --dtype bfloat16
        cache, rest, rest_mask = on_device(prefix, "cuda").start_decoding(cuda_gpt, idx.cuda(), mask.cuda())
        texts = beam_search(cuda_gpt, rest, 10, 4, cache=cache, attention_mask=rest_mask, eos_id=EOT,
                            banned_ids=[EOT])
    assert all(k.dtype == v.dtype == (torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
               for k, v in cache.layers)  # the float32 prefix did not promote a bf16 cache
    assert len(texts) == 2 and all(len(text) == 10 for text in texts)  # eos banned: every row gets 10 tokens
    assert all(0 <= token < EOT for text in texts for token in text)


def test_a_run_killed_and_resumed_on_cuda_with_prefix_dropout_ends_bitwise_equal(tiny_gpt2, e2e_dir, tmp_path):
    """train.py on the GPU with prefix dropout, SIGKILLed once a checkpoint exists and resumed, against the same
    run uninterrupted. --eval_iters 0 validates on the whole dev split, which keeps a GPU run of the tiny model
    busy long enough to be killed between its first checkpoint and its end."""
    from test_train import kill_after_first_checkpoint_and_resume
    reference, resumed = kill_after_first_checkpoint_and_resume(tiny_gpt2, e2e_dir, tmp_path, "--device", "cuda",
                                                                "--prefix_dropout", "0.2", "--eval_iters", "0")
    for name in ("prefix.safetensors", "prefix_best.safetensors"):
        assert torch.equal(safetensors.load_file(resumed / name)["prefix"],
                           safetensors.load_file(reference / name)["prefix"])
