"""The baselines (baselines/) on a tiny random GPT: what trains, what stays bit-identical, exports, errors."""
import pytest
import torch

from baselines import Adapters, FineTuning, LoRA, adapter_dim_for_share, build_baseline, load_tuned, save_tuned
from common.errors import UserError
from model import GPT, GPTConfig
from model import safetensors
from prefix import freeze

CONFIG = GPTConfig(n_layer=4, n_head=2, n_embd=16, vocab_size=97, block_size=24)
SETTINGS = {"top_blocks": 2, "adapter_dim": 5, "lora_rank": 3, "lora_alpha": 6.0}


def tiny_gpt(seed=0) -> GPT:
    torch.manual_seed(seed)
    gpt = GPT(CONFIG)
    with torch.no_grad():  # LayerNorms away from 1 and 0, so that no tensor's gradient is trivially structured
        for name, p in gpt.named_parameters():
            if "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return freeze(gpt)  # what train.py does before it builds the method


def batch(seed=1, B=3, T=CONFIG.block_size):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, CONFIG.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, CONFIG.vocab_size, (B, T), generator=g)
    targets[:, :T // 3] = -100  # the table half of a row has no target, as in training
    return idx, targets


def train_steps(method, gpt, steps=3, lr=1e-2):
    """As train.py: AdamW over the method's trainable parameters, loss = method.loss(gpt, idx, targets)."""
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    method.train()
    for step in range(steps):
        idx, targets = batch(seed=step)
        loss = method.loss(gpt, idx, targets, method(idx.size(0)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return method.eval()


def snapshot(gpt):
    """The GPT's own parameters (the objects, which survive insertions) and copies of their values."""
    return [(name, p, p.detach().clone()) for name, p in gpt.named_parameters()]


@torch.no_grad()
def logits(gpt, seed=7):
    return gpt(batch(seed)[0])[0]


def test_fine_tuning_moves_every_weight():
    gpt = tiny_gpt()
    before = snapshot(gpt)
    train_steps(FineTuning(gpt), gpt, steps=2)
    unchanged = [name for name, p, old in before if torch.equal(p, old)]
    assert not unchanged


def test_ft_top2_changes_only_the_top_two_blocks():
    gpt = tiny_gpt()
    before = snapshot(gpt)
    train_steps(FineTuning(gpt, top_blocks=2), gpt, steps=2)
    top = (f"transformer.h.{CONFIG.n_layer - 2}.", f"transformer.h.{CONFIG.n_layer - 1}.")
    for name, p, old in before:
        if name.startswith(top):
            assert not torch.equal(p, old), f"{name} should have trained"
        else:
            assert torch.equal(p, old), f"{name} should be frozen"  # bit-identical: embeddings, ln_f, lower blocks


@pytest.mark.parametrize("mode", ["adapter", "lora"])
def test_adapters_and_lora_change_only_their_own_parameters(mode):
    gpt = tiny_gpt()
    before = snapshot(gpt)
    method = build_baseline(mode, gpt, SETTINGS)
    own = [(p, p.detach().clone()) for p in method.parameters()]
    assert own and all(p.requires_grad for p, _ in own)
    train_steps(method, gpt, steps=3)  # 3 steps: W_up / B start at zero, so W_down / A move from the second on
    assert all(torch.equal(p, old) for _, p, old in before)
    assert all(not torch.equal(p, old) for p, old in own)
    assert not any(p.requires_grad for _, p, _ in before)


@pytest.mark.parametrize("mode", ["adapter", "lora"])
def test_a_new_adapter_or_lora_leaves_the_logits_exactly_unchanged(mode):
    gpt = tiny_gpt()
    reference = logits(gpt)
    method = build_baseline(mode, gpt, SETTINGS)
    if mode == "lora":
        assert all(torch.count_nonzero(b) == 0 for b in method.B) and any(a.abs().sum() > 0 for a in method.A)
    assert torch.equal(logits(gpt), reference)


def test_merged_lora_gives_the_logits_of_the_unmerged_one():
    gpt = tiny_gpt()
    base = logits(gpt)
    lora = train_steps(LoRA(gpt, rank=3, alpha=6.0), gpt, steps=3)
    assert all(torch.count_nonzero(b) > 0 for b in lora.B)
    unmerged = logits(gpt)
    assert not torch.allclose(unmerged, base, atol=1e-4)  # the update does something, so the check below can fail
    lora.merge()
    assert not any(hasattr(block.attn.c_attn, "A") for block in gpt.transformer.h)  # plain Linears again
    torch.testing.assert_close(logits(gpt), unmerged, atol=1e-5, rtol=0)


@pytest.mark.parametrize("share", [0.001, 0.03])
def test_adapter_dim_for_share_hits_the_budget(share):
    config = GPTConfig(n_layer=2, n_head=4, n_embd=256, vocab_size=20000, block_size=64)
    torch.manual_seed(0)
    gpt = freeze(GPT(config))
    total = sum(p.numel() for p in gpt.parameters())
    dim = adapter_dim_for_share(config, share, total)

    def adapter_parameters(d):
        return sum(p.numel() for p in Adapters(freeze(GPT(config)), d).parameters())

    count = sum(p.numel() for p in Adapters(gpt, dim).parameters())
    assert abs(count / (share * total) - 1) < 0.05
    # the nearest a whole bottleneck can get: one unit more or less is no closer
    per_unit = adapter_parameters(2) - adapter_parameters(1)
    assert abs(count - share * total) <= per_unit / 2


@pytest.mark.parametrize("mode", ["finetune-top", "adapter", "lora"])
def test_save_tuned_then_load_tuned_on_a_fresh_base_gives_the_same_logits(mode, tmp_path):
    gpt = tiny_gpt()
    base_state = {k: v.clone() for k, v in gpt.state_dict().items()}
    method = train_steps(build_baseline(mode, gpt, SETTINGS), gpt)
    trained = logits(gpt)
    save_tuned(method, tmp_path / "tuned.safetensors", mode, SETTINGS, "tiny")
    fresh = GPT(CONFIG)
    fresh.load_state_dict(base_state)
    assert not torch.equal(logits(fresh), trained)  # the export must carry what training changed
    loaded = load_tuned(tmp_path / "tuned.safetensors", fresh)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(logits(fresh), trained)


def damage_random_bytes(path, method):
    path.write_bytes(b"this is not a safetensors file at all, just some bytes")


def damage_truncate(path, method):
    path.write_bytes(path.read_bytes()[:-40])


def damage_foreign(path, method):  # a valid safetensors file of something else, e.g. another project's tensors
    safetensors.save_file({"prefix": torch.zeros(2, 3)}, path, {"format": "prefix-tuning-prefix/1"})


def damage_missing_tensor(path, method):  # the right metadata, a tensor gone
    tensors = safetensors.load_file(path)
    tensors.pop(next(iter(tensors)))
    safetensors.save_file(tensors, path, safetensors.load_metadata(path))


def damage_other_shape(path, method):
    safetensors.save_file(safetensors.load_file(path), path, safetensors.load_metadata(path) | {"n_embd": "32"})


def damage_huge_setting(path, method):  # a corrupted width must be refused before it sizes (and allocates) a module
    name = "adapter_dim" if isinstance(method, Adapters) else "lora_rank"
    safetensors.save_file(safetensors.load_file(path), path, safetensors.load_metadata(path) | {name: "1000000000"})


@pytest.mark.parametrize("damage", [damage_random_bytes, damage_truncate, damage_foreign, damage_missing_tensor,
                                    damage_other_shape, damage_huge_setting], ids=lambda f: f.__name__.removeprefix("damage_"))
@pytest.mark.parametrize("mode", ["adapter", "lora"])
def test_a_damaged_or_foreign_export_is_one_sentence(mode, damage, tmp_path):
    method = build_baseline(mode, tiny_gpt(), SETTINGS)
    path = tmp_path / "tuned.safetensors"
    save_tuned(method, path, mode, SETTINGS, "tiny")
    damage(path, method)
    with pytest.raises(UserError) as error:
        load_tuned(path, tiny_gpt())
    assert "\n" not in str(error.value) and str(error.value)


@pytest.mark.parametrize("mode,setting", [("adapter", {"adapter_dim": 9 * CONFIG.n_embd}),
                                          ("lora", {"lora_rank": 2 * CONFIG.n_embd})])
def test_a_wide_adapter_or_high_rank_lora_that_train_py_accepts_loads_back(mode, setting, tmp_path):
    # train.py takes any positive --adapter_dim / --lora_rank (a 3% adapter on a narrow GPT is wider than 4 x n_embd)
    gpt = tiny_gpt()
    method = train_steps(build_baseline(mode, gpt, SETTINGS | setting), gpt, steps=2)
    save_tuned(method, tmp_path / "tuned.safetensors", mode, SETTINGS | setting, "tiny")
    fresh = tiny_gpt()
    loaded = load_tuned(tmp_path / "tuned.safetensors", fresh)
    assert torch.equal(logits(fresh), logits(gpt))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in method.parameters())


def test_a_missing_export_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="no exported baseline"):
        load_tuned(tmp_path / "absent.safetensors", tiny_gpt())


def test_each_baseline_saves_only_what_it_trains():
    L = CONFIG.n_layer
    lora = build_baseline("lora", tiny_gpt(), SETTINGS)
    assert set(lora.state_dict()) == {f"{m}.{i}" for m in "AB" for i in range(L)}
    adapters = build_baseline("adapter", tiny_gpt(), SETTINGS)
    assert adapters.state_dict() and all(k.startswith("adapters.") for k in adapters.state_dict())
    assert sum(t.numel() for t in adapters.state_dict().values()) == sum(p.numel() for p in adapters.parameters())
    gpt = tiny_gpt()
    top = build_baseline("finetune-top", gpt, SETTINGS)
    expected = {f"trained.{i - (L - 2)}.{k}" for i in (L - 2, L - 1) for k in gpt.transformer.h[i].state_dict()}
    assert set(top.state_dict()) == expected
    full = build_baseline("finetune", gpt, SETTINGS)
    assert set(full.state_dict()) == {f"trained.{k}" for k in gpt.state_dict()}
    # and the parameters it trains are exactly the GPT's own
    assert {id(p) for p in full.parameters()} == {id(p) for p in gpt.parameters()}
