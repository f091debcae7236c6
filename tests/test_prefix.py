"""prefix/: the reparameterization against HF PEFT, export, freezing, ablations, the per-row bank, PEFT files."""
import copy
import json

import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, get_peft_model

from common.errors import UserError
from conftest import DEVICES, on_device, run_main, run_script
from hub_checkpoint import random_hf_gpt2, write_checkpoint
from model import GPT, GPTConfig, KVCache
from model.generate import generate
from prefix import PrefixTuning, freeze
from prefix.ablations import EmbeddingOnly, InfixTuning, build_prefix, init_from_text
from prefix.artifact import load_prefix, prefix_metadata, save_prefix
from prefix.bank import PrefixBank
from prefix.tuning import prefix_rows
from prefix import peft_format
from prefix.peft_format import load_peft_adapter, save_peft_adapter

V = 101


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    hf = random_hf_gpt2(n_layer=3, n_head=3, n_embd=24, vocab_size=V, n_positions=64, seed=1)
    ours = GPT.from_pretrained(str(write_checkpoint(hf, tmp_path_factory.mktemp("ckpt"))))
    return hf, freeze(ours)


@pytest.fixture(scope="module")
def gpt(hf_and_ours):
    return hf_and_ours[1]


def peft_prefix_model(hf, projection: bool, P=5):
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection,
                                encoder_hidden_size=16)
    torch.manual_seed(3)
    return get_peft_model(copy.deepcopy(hf), config).eval()  # PEFT wraps the model it is given


def copy_from_peft(peft_model, ours: PrefixTuning):
    encoder = peft_model.prompt_encoder["default"]
    with torch.no_grad():
        ours.table.copy_(encoder.embedding.weight)
        if ours.mlp is not None:
            for i in (0, 2):
                ours.mlp[i].weight.copy_(encoder.transform[i].weight)
                ours.mlp[i].bias.copy_(encoder.transform[i].bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("projection", [True, False], ids=["mlp", "no-mlp"])
def test_logits_equal_hf_peft_prefix_tuning(hf_and_ours, projection, device):
    hf, gpt = hf_and_ours
    peft_model = peft_prefix_model(hf, projection)
    ours = PrefixTuning(gpt.config, 5, mid_dim=16, reparam=projection)
    copy_from_peft(peft_model, ours)
    peft_model, gpt, ours = peft_model.to(device), on_device(gpt, device), ours.to(device)
    idx = torch.randint(0, V, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    idx, mask = idx.to(device), mask.to(device)
    with torch.no_grad():
        for m in (None, mask):
            theirs = peft_model(input_ids=idx, attention_mask=m).logits
            mine = gpt(idx, prefix=ours(3), attention_mask=m)[0]
            keep = slice(None) if m is None else m.bool()
            torch.testing.assert_close(mine[keep], theirs[keep], atol=1e-4, rtol=0)


def test_our_export_runs_in_peft_and_peft_adapters_run_here(hf_and_ours, tmp_path):
    hf, gpt = hf_and_ours
    idx = torch.randint(0, V, (2, 9))
    ours = PrefixTuning(gpt.config, 4, mid_dim=16)
    save_peft_adapter(ours.export(), tmp_path / "ours", base_model="tiny")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=idx).logits, gpt(idx, prefix=ours(2))[0], atol=1e-4, rtol=0)

    trained_in_peft = peft_prefix_model(hf, projection=True, P=6)  # P' and MLP; PEFT saves only P
    trained_in_peft.save_pretrained(tmp_path / "theirs")
    loaded = load_peft_adapter(tmp_path / "theirs", gpt.config)
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx, prefix=loaded(2))[0], trained_in_peft(input_ids=idx).logits,
                                   atol=1e-4, rtol=0)


def test_the_export_command_writes_an_adapter_that_the_three_peft_lines_of_docs_usage_load(hf_and_ours, tmp_path):
    from transformers import AutoModelForCausalLM
    hf, gpt = hf_and_ours
    base = str(write_checkpoint(hf, tmp_path / "base"))
    run = tmp_path / "run"
    run.mkdir()
    exports = {}
    for seed, which, name in ((5, "best", "prefix_best.safetensors"), (6, "final", "prefix.safetensors")):
        torch.manual_seed(seed)
        exports[which] = PrefixTuning(gpt.config, 4, mid_dim=8).export()
        save_prefix(exports[which], run / name, base)
    idx = torch.randint(0, V, (2, 9))
    for which, prefix in exports.items():
        result = run_script("-m", "prefix.peft_format", "export", run, tmp_path / which, "--prefix", which)
        assert result.returncode == 0, result.stderr
        assert f"wrote {tmp_path / which}" in result.stdout
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / which)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=idx).logits, gpt(idx, prefix=prefix(2))[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant,message", [(None, "holds no exported prefix (prefix_best.safetensors"),
                                             ("infix", "PEFT only runs prefixes placed before the input")])
def test_the_export_command_refuses_in_one_sentence(gpt, tmp_path, variant, message):
    if variant:
        save_prefix(build_prefix(variant, gpt, 2, 8).export(), tmp_path / "prefix.safetensors", "tiny")
    result = run_main(peft_format.main, "export", tmp_path, tmp_path / "adapter")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_peft_adapter_for_another_model_is_refused(hf_and_ours, tmp_path):
    _, gpt = hf_and_ours
    other = GPTConfig(n_layer=2, n_head=3, n_embd=24, vocab_size=V, block_size=64)
    save_peft_adapter(PrefixTuning(other, 3).export(), tmp_path, base_model="other")
    with pytest.raises(UserError, match="trained for a GPT with 2 layers"):
        load_peft_adapter(tmp_path, gpt.config)


def test_an_incomplete_peft_adapter_is_one_sentence(hf_and_ours, tmp_path):
    _, gpt = hf_and_ours
    save_peft_adapter(PrefixTuning(gpt.config, 3).export(), tmp_path, base_model="tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    del config["num_virtual_tokens"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="lacks num_virtual_tokens"):
        load_peft_adapter(tmp_path, gpt.config)
    (tmp_path / "adapter_model.safetensors").unlink()
    config["num_virtual_tokens"] = 3
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="could not read"):
        load_peft_adapter(tmp_path, gpt.config)


def test_export_then_load_reproduces_the_logits_exactly(gpt, tmp_path):
    prefix = PrefixTuning(gpt.config, 4, mid_dim=16, positions_from_zero=True)
    save_prefix(prefix.export(), tmp_path / "prefix.safetensors", base_model="tiny")
    loaded = load_prefix(tmp_path / "prefix.safetensors", gpt.config)
    assert loaded.mlp is None and not any(p.requires_grad for p in loaded.parameters())
    assert sum(p.numel() for p in loaded.parameters()) == 4 * gpt.config.n_layer * 2 * gpt.config.n_embd
    assert loaded.positions_from_zero
    idx = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        assert torch.equal(gpt(idx, cache=loaded.cache(2, loaded(2)))[0],
                           gpt(idx, cache=prefix.cache(2, prefix(2)))[0])
    assert prefix_metadata(tmp_path / "prefix.safetensors")["base_model"] == "tiny"


@pytest.mark.parametrize("from_zero", [False, True])
def test_the_loss_and_decoding_number_the_tokens_as_the_prefix_says(gpt, from_zero):
    """The prefix owns its position convention: its loss and its decoding cache give the real tokens positions P..
    (the default) or 0.. (positions_from_zero), as KVCache.start does for the GPT."""
    prefix = PrefixTuning(gpt.config, 4, mid_dim=16, positions_from_zero=from_zero)
    idx, targets = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    with torch.no_grad():
        kv = prefix(2)
        want = {zero: gpt(idx, targets, cache=KVCache.start(2, kv, positions_from_zero=zero))[1]
                for zero in (False, True)}
        assert not torch.equal(want[False], want[True])
        assert torch.equal(prefix.loss(gpt, idx, targets, kv), want[from_zero])
        cache, prompt, _ = prefix.start_decoding(gpt, idx, None)
        assert cache.next_position.tolist() == [0 if from_zero else 4] * 2


def test_a_mismatched_artifact_is_refused(gpt, tmp_path):
    other = GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=V, block_size=64)
    save_prefix(PrefixTuning(other, 3).export(), tmp_path / "p.safetensors", base_model="gpt2-tiny")
    with pytest.raises(UserError, match="trained for gpt2-tiny .*--init_from gpt2-tiny"):
        load_prefix(tmp_path / "p.safetensors", gpt.config)
    with pytest.raises(UserError, match="no exported prefix"):
        load_prefix(tmp_path / "missing.safetensors", gpt.config)


@pytest.mark.parametrize("damage", ["metadata", "tensor"])
def test_a_damaged_artifact_is_one_sentence(gpt, tmp_path, damage):
    from model import safetensors as our_safetensors
    save_prefix(PrefixTuning(gpt.config, 3).export(), tmp_path / "p.safetensors", base_model="tiny")
    tensors = our_safetensors.load_file(tmp_path / "p.safetensors")
    metadata = our_safetensors.load_metadata(tmp_path / "p.safetensors")
    if damage == "metadata":
        del metadata["prefix_len"]
    else:
        tensors = {"something_else": tensors["prefix"]}
    our_safetensors.save_file(tensors, tmp_path / "p.safetensors", metadata)
    with pytest.raises(UserError, match="is damaged"):
        load_prefix(tmp_path / "p.safetensors", gpt.config)


def test_an_infix_refuses_positions_from_zero(gpt):
    with pytest.raises(ValueError, match="an infix continues the table's positions"):
        build_prefix("infix", gpt, 3, positions_from_zero=True)


def test_only_the_prefix_trains_and_the_gpt_stays_bitwise_unchanged(gpt):
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    prefix = PrefixTuning(gpt.config, 4, mid_dim=16, dropout=0.1)
    optimizer = torch.optim.AdamW(prefix.parameters(), lr=1e-2)
    idx, targets = torch.randint(0, V, (4, 10)), torch.randint(0, V, (4, 10))
    for _ in range(3):
        loss = prefix.loss(gpt, idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in gpt.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefix.parameters())
    assert all(torch.equal(v, before[k]) for k, v in gpt.state_dict().items())
    assert not gpt.training


def test_reparameterization_shapes_and_options(gpt):
    c = gpt.config
    with_mlp, direct = PrefixTuning(c, 7, mid_dim=32), PrefixTuning(c, 7, reparam=False)
    assert with_mlp.table.shape == (7, c.n_embd) and with_mlp.activations().shape == (7, c.n_layer * 2 * c.n_embd)
    assert [type(m).__name__ for m in with_mlp.mlp] == ["Linear", "Tanh", "Linear"]
    assert with_mlp.mlp[0].out_features == 32
    assert direct.mlp is None and direct.table.shape == (7, c.n_layer * 2 * c.n_embd)
    kv = with_mlp(5)
    assert len(kv) == c.n_layer and all(k.shape == v.shape == (5, c.n_head, 7, c.head_dim) for k, v in kv)


def test_prefix_dropout_draws_per_row_in_training_only(gpt):
    prefix = PrefixTuning(gpt.config, 4, mid_dim=16, dropout=0.5)
    k = prefix(2)[0][0]
    assert not torch.equal(k[0], k[1])
    prefix.eval()
    k = prefix(2)[0][0]
    assert torch.equal(k[0], k[1])


def test_parameter_report_counts_the_paper_quantities():
    c = GPTConfig(n_layer=4, n_head=4, n_embd=32, vocab_size=V, block_size=64)
    gpt = GPT(c)
    report = PrefixTuning(c, 10, mid_dim=512).report(sum(p.numel() for p in gpt.parameters()))
    trainable = 10 * 32 + (32 * 512 + 512) + (512 * 4 * 2 * 32 + 4 * 2 * 32)
    stored = 10 * 4 * 2 * 32
    assert f"{trainable:,} trainable" in report and f"{stored:,} stored" in report
    assert f"{100 * stored / sum(p.numel() for p in gpt.parameters()):.3f}%" in report


# ---- the ablations ---------------------------------------------------------------------------------------------

def train_steps(prefix, gpt, idx, targets, steps=40, lr=5e-2):
    optimizer = torch.optim.Adam([p for p in prefix.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = prefix.loss(gpt, idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def toy_task(rows=6, table=5, text=6, seed=0):
    """Right-padded rows ` table <eot> text <eot>` with one text for every table (learnable by any prefix);
    targets only on the text, as data/ builds them."""
    g = torch.Generator().manual_seed(seed)
    eot = V - 1
    idx = torch.full((rows, table + text + 2), eot)
    targets = torch.full_like(idx, -100)
    y = torch.randint(0, V - 1, (text,), generator=g)
    for r in range(rows):
        n = table - r % 3  # tables of different lengths
        x = torch.randint(0, V - 1, (n,), generator=g)
        seq = torch.cat([x, torch.tensor([eot]), y, torch.tensor([eot])])
        idx[r, :len(seq) - 1], targets[r, n:len(seq) - 1] = seq[:-1], seq[n + 1:]
    return idx, targets


@pytest.fixture(scope="module")
def steerable_gpt():
    """A random GPT with weights 10x GPT-2's init: at 0.02 its outputs are nearly uniform whatever the prefix."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=3, n_head=3, n_embd=24, vocab_size=V, block_size=64))
    with torch.no_grad():
        for p in gpt.parameters():
            p.mul_(10 if p.dim() > 1 else 1)
    return freeze(gpt)


@pytest.mark.parametrize("make", [
    lambda gpt: PrefixTuning(gpt.config, 4, mid_dim=32),
    lambda gpt: PrefixTuning(gpt.config, 4, reparam=False),
    lambda gpt: EmbeddingOnly(gpt, 4),
    lambda gpt: InfixTuning(gpt.config, 4, mid_dim=32),
], ids=["prefix-mlp", "prefix-direct", "embedding-only", "infix"])
def test_each_variant_learns_a_small_task(steerable_gpt, make):
    torch.manual_seed(0)
    idx, targets = toy_task()
    losses = train_steps(make(steerable_gpt), steerable_gpt, idx, targets)
    assert losses[-1] < 0.8 * losses[0]


def test_embedding_only_trains_only_input_embeddings_that_the_gpt_carries_through_every_layer(gpt):
    prefix = EmbeddingOnly(gpt, 4)
    assert [p.shape for p in prefix.parameters()] == [(4, gpt.config.n_embd)]
    assert not any(name.startswith("frozen") for name in prefix.state_dict())
    words = torch.randint(0, V, (1, 4))
    init_from_text(prefix, gpt, words[0].tolist())
    idx = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx, prefix=prefix(2))[0],
                                   gpt(torch.cat([words.expand(2, -1), idx], 1))[0][:, 4:], atol=1e-5, rtol=0)


def infix_of_real_tokens(gpt, x, z):
    """The keys and values real tokens z get when they follow x: what an infix equal to z must be."""
    return [(k[:, :, x.size(1):], v[:, :, x.size(1):]) for k, v in gpt.keys_values(torch.cat([x, z], 1))]


def test_infix_sits_between_table_and_text(gpt):
    """An infix equal to real tokens z gives the loss of the GPT on [x ; z ; y], rows of any table length."""
    idx, targets = toy_task(rows=3)
    z = torch.randint(0, V - 1, (1, 3))
    infix = InfixTuning(gpt.config, 3, reparam=False)
    total, count = 0.0, 0
    for r in range(3):
        sep = int((targets[r] != -100).int().argmax())
        x, y, t = idx[r:r + 1, :sep], idx[r:r + 1, sep:], targets[r:r + 1, sep:]
        kv = infix_of_real_tokens(gpt, x, z)
        with torch.no_grad():
            row_loss = infix.loss(gpt, idx[r:r + 1], targets[r:r + 1], kv=kv)
            full, _ = gpt(torch.cat([x, z, y], 1))
        reference = torch.nn.functional.cross_entropy(full[0, sep + 3:], t[0], ignore_index=-100)
        torch.testing.assert_close(row_loss, reference, atol=1e-5, rtol=0)
        n = int((t != -100).sum())
        total, count = total + reference.item() * n, count + n
    with torch.no_grad():  # the batched loss: per-row K/V stacked
        kvs = [infix_of_real_tokens(gpt, idx[r:r + 1, :int((targets[r] != -100).int().argmax())], z) for r in range(3)]
        batched = [(torch.cat([kv[l][0] for kv in kvs]), torch.cat([kv[l][1] for kv in kvs])) for l in range(3)]
        assert abs(infix.loss(gpt, idx, targets, kv=batched).item() - total / count) < 1e-5


def test_infix_decoding_equals_decoding_with_the_real_tokens(gpt):
    z = torch.randint(0, V - 1, (1, 3))
    prompt = torch.cat([torch.randint(0, V - 1, (1, 6)), torch.tensor([[V - 1]])], 1)
    infix = InfixTuning(gpt.config, 3, reparam=False)
    with torch.no_grad():
        infix.table.copy_(prefix_rows(infix_of_real_tokens(gpt, prompt[:, :-1], z)))
    cache, rest, mask = infix.start_decoding(gpt, prompt, None)
    got = generate(gpt, rest, 6, cache=cache, attention_mask=mask, temperature=0)
    expected = generate(gpt, torch.cat([prompt[:, :-1], z, prompt[:, -1:]], 1), 6, temperature=0)
    assert torch.equal(got, expected)


def test_init_from_real_words(gpt):
    words = torch.randint(0, V, (1, 5))
    direct = PrefixTuning(gpt.config, 5, reparam=False)
    assert init_from_text(direct, gpt, words[0].tolist()) == 0.0
    idx = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx, prefix=direct(2))[0],
                                   gpt(torch.cat([words.expand(2, -1), idx], 1))[0][:, 5:], atol=1e-5, rtol=0)
    with_mlp = PrefixTuning(gpt.config, 5, mid_dim=64)
    target = direct.activations().detach()
    error = init_from_text(with_mlp, gpt, words[0].tolist(), fit_steps=500, lr=1e-2)
    assert error < 0.01 * target.pow(2).mean().item()
    with pytest.raises(UserError, match="--prefix_len 5"):
        init_from_text(PrefixTuning(gpt.config, 4), gpt, words[0].tolist())


# ---- per-row prefixes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bank_rows_equal_each_row_alone_in_training_and_decoding(gpt, device):
    torch.manual_seed(0)
    bank = PrefixBank([PrefixTuning(gpt.config, 4, mid_dim=16) for _ in range(3)]).to(device)
    which = torch.tensor([2, 0, 2, 1], device=device)
    idx, targets = torch.randint(0, V, (4, 8)).to(device), torch.randint(0, V, (4, 8)).to(device)
    gpt = on_device(gpt, device)
    logits = gpt(idx, prefix=bank(which))[0]
    # on a GPU, cuBLAS may pick another kernel for 4 rows than for 1: the same math, summed in another order
    atol = 1e-6 if device == "cpu" else 1e-5
    for row, task in enumerate(which.tolist()):
        alone = gpt(idx[row:row + 1], prefix=bank.prefixes[task](1))[0]
        torch.testing.assert_close(logits[row], alone[0], atol=atol, rtol=0)
    # gradients reach each task's prefix from its own rows only
    _, loss = gpt(idx[:1], targets[:1], prefix=bank(which[:1]))
    loss.backward()
    assert bank.prefixes[2].table.grad.abs().sum() > 0 and bank.prefixes[0].table.grad.abs().sum() == 0
    # cached decoding
    with torch.no_grad():
        together = generate(gpt, idx, 5, prefix=bank(which), temperature=0)
        for row, task in enumerate(which.tolist()):
            alone = generate(gpt, idx[row:row + 1], 5, prefix=bank.prefixes[task](1), temperature=0)
            assert torch.equal(together[row], alone[0])
