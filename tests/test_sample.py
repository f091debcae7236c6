"""Decoding (greedy, sampling, beam search; batched and cached) and sample.py end to end."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import sample
import train
from conftest import run_main, run_script
from model import GPT, GPTConfig
from model.generate import beam_search, generate, left_pad, next_token
from prefix import PrefixTuning, freeze

V, EOS = 40, 39


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=V, block_size=64))
    with torch.no_grad():  # larger weights: sharper, more varied next-token distributions
        for p in model.parameters():
            p.mul_(8 if p.dim() > 1 else 1)
    return freeze(model)


@pytest.fixture(scope="module")
def prefix(gpt):
    torch.manual_seed(1)
    return PrefixTuning(gpt.config, 3, mid_dim=8).eval()


PROMPTS = [[5, 9, 2, 7, 1], [3], [8, 8, 4]]


def greedy_without_cache(gpt, prompt, n, prefix=None):
    """Recompute the whole sequence at every step: the slow, obviously right greedy decoder."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = gpt(torch.tensor([seq]), prefix=None if prefix is None else prefix(1))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_equals_recomputing_greedy(gpt, prefix):
    for p in (None, prefix):
        for prompt in PROMPTS:
            out = generate(gpt, torch.tensor([prompt]), 8, prefix=None if p is None else p(1), temperature=0)
            assert out[0].tolist() == greedy_without_cache(gpt, prompt, 8, p)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_padded_batched_decoding_equals_each_prompt_alone(gpt, prefix, num_beams):
    idx, mask = left_pad(PROMPTS, pad_id=0)
    if num_beams == 1:
        together = generate(gpt, idx, 8, prefix=prefix(1), attention_mask=mask, temperature=0).tolist()
        alone = [generate(gpt, torch.tensor([p]), 8, prefix=prefix(1), temperature=0)[0].tolist() for p in PROMPTS]
    else:
        together = beam_search(gpt, idx, 8, num_beams, eos_id=EOS, prefix=prefix(1), attention_mask=mask)
        alone = [beam_search(gpt, torch.tensor([p]), 8, num_beams, eos_id=EOS, prefix=prefix(1))[0] for p in PROMPTS]
    assert together == alone


def test_beam_search_for_no_tokens_returns_empty_texts(gpt, prefix):
    assert beam_search(gpt, torch.tensor([PROMPTS[0]] * 2), 0, 3, eos_id=EOS, prefix=prefix(1)) == [[], []]


def test_beam_search_with_one_beam_is_greedy(gpt, prefix):
    for prompt in PROMPTS:
        greedy = generate(gpt, torch.tensor([prompt]), 10, prefix=prefix(1), temperature=0, eos_id=EOS)[0].tolist()
        greedy = greedy[:greedy.index(EOS)] if EOS in greedy else greedy
        assert beam_search(gpt, torch.tensor([prompt]), 10, 1, eos_id=EOS, prefix=prefix(1)) == [greedy]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_finds_the_exhaustive_best_on_a_small_case(length_penalty):
    """Vocabulary 5 (eos = 4), 3 new tokens: enumerate every hypothesis and score it by full recomputation."""
    torch.manual_seed(4)  # a model on which greedy decoding misses the best hypothesis (asserted below)
    small = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, vocab_size=5, block_size=16))
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(3 if p.dim() > 1 else 1)
    small = freeze(small)
    prompt, eos, n = [1, 2], 4, 3

    def score(tokens):
        with torch.no_grad():
            logits, _ = small(torch.tensor([prompt + tokens[:-1]]))
        logp = F.log_softmax(logits[0, len(prompt) - 1:], -1)
        total = sum(logp[i, t].item() for i, t in enumerate(tokens))
        return total / (len(prompt) + len([t for t in tokens if t != eos])) ** length_penalty  # transformers 3.2

    hypotheses = [list(h) + [eos] for k in range(n) for h in itertools.product(range(4), repeat=k)]
    hypotheses += [list(h) for h in itertools.product(range(4), repeat=n)]  # cut off by the length limit
    best = max(hypotheses, key=score)
    found = beam_search(small, torch.tensor([prompt]), n, num_beams=30, eos_id=eos, length_penalty=length_penalty)[0]
    assert found == [t for t in best if t != eos]
    greedy = beam_search(small, torch.tensor([prompt]), n, num_beams=1, eos_id=eos, length_penalty=length_penalty)[0]
    assert greedy != found  # the case is hard enough to tell a beam search from a greedy one


# A hand-made model for beam search's arithmetic: the next token's probabilities depend on the last token alone.
# Tokens: 0 ends every prompt, 1 = a, 2 = b, 3 = c, 4 = d, 5 = eos (4 also pads).
NEXT = torch.tensor([
    #  0     a     b     c     d    eos
    [0.00, 0.40, 0.45, 0.01, 0.13, 0.01],  # after 0
    [0.01, 0.01, 0.01, 0.03, 0.05, 0.90],  # after a
    [0.00, 0.04, 0.01, 0.85, 0.08, 0.02],  # after b
    [0.00, 0.08, 0.05, 0.05, 0.12, 0.70],  # after c
    [0.00, 0.15, 0.10, 0.10, 0.05, 0.60],  # after d
    [0.00, 0.01, 0.04, 0.05, 0.50, 0.40],  # after eos (a prompt's last token)
])


class MarkovLM(torch.nn.Module):
    config = GPTConfig(n_layer=1, n_head=1, n_embd=1, vocab_size=6)  # beam_search reads only vocab_size

    def forward(self, idx, attention_mask=None, cache=None, last_only=False):
        return NEXT.log()[idx[:, -1]][:, None], None


def test_beam_score_counts_the_prompt_and_not_eos():
    """Two beams after a 4-token prompt. Finished hypotheses (log p):
      A = a eos:   log .40 + log .90          = -1.0217, found at step 2
      B = b c eos: log .45 + log .85 + log .70 = -1.3185, found at step 3, when its row is done (is_done:
                   the worst finished, B, is not below the step's best candidate, B's own eos, over 4 + 2)
    transformers 3.2 (length = prompt + text without eos): A -1.0217 / 5 = -0.204 beats B -1.3185 / 6 = -0.220.
    Dividing by the text with its eos instead (this code until now): A / 2 = -0.511 loses to B / 3 = -0.440.
    With a 1-token prompt the 3.2 rule gives A / 2 = -0.511 and B / 3 = -0.440: B, also in a left-padded batch,
    where the padding must not count.
    """
    lm = MarkovLM()
    assert beam_search(lm, torch.tensor([[0, 0, 0, 0]]), 6, 2, eos_id=5) == [[1]]
    assert beam_search(lm, torch.tensor([[0]]), 6, 2, eos_id=5) == [[2, 3]]
    idx, mask = left_pad([[0], [0, 0, 0, 0]], pad_id=4)
    assert beam_search(lm, idx, 6, 2, eos_id=5, attention_mask=mask) == [[2, 3], [1]]


def test_an_eos_outside_the_top_beams_finishes_nothing():
    """After a prompt ending in eos, step 1 ranks d (log .50) first and eos (log .40) second; no length penalty.
    With 2 beams eos ranks among them: the empty text (-0.92) finishes, and beats d eos (-0.69 + log .60 = -1.20).
    With 1 beam it does not, so d eos is all there is."""
    assert beam_search(MarkovLM(), torch.tensor([[5]]), 6, 2, eos_id=5, length_penalty=0.0) == [[]]
    assert beam_search(MarkovLM(), torch.tensor([[5]]), 6, 1, eos_id=5, length_penalty=0.0) == [[4]]


def test_min_length_counts_the_prompt():
    """eos is banned while prompt + text is shorter than min_length, as in transformers 3.2."""
    lm, prompt = MarkovLM(), torch.tensor([[0, 0, 0, 0]])
    # min_length 5 (the authors' setting) bans eos at step 1 only, when the prompt alone is 4 long: A still wins
    assert beam_search(lm, prompt, 6, 2, eos_id=5, min_length=5) == [[1]]
    # min_length 6 bans it at step 2 as well, so A never finishes and B (b c eos, at length 6) wins
    assert beam_search(lm, prompt, 6, 2, eos_id=5, min_length=6) == [[2, 3]]
    # greedy: b c eos after 4 tokens; after 1 token eos waits until the length is 6: b c d a d eos
    idx, mask = left_pad([[0, 0, 0, 0], [0]], pad_id=4)
    out = generate(lm, idx, 6, attention_mask=mask, temperature=0, eos_id=5, min_length=6).tolist()
    assert out == [[2, 3, 5, 5, 5, 5], [2, 3, 4, 1, 4, 5]]


def test_eos_ends_a_row_and_pads_it(gpt):
    idx, mask = left_pad(PROMPTS, pad_id=0)
    logits, _ = gpt(idx, attention_mask=mask, last_only=True)
    first = logits[:, -1].argmax(-1)
    out = generate(gpt, idx, 6, attention_mask=mask, temperature=0, eos_id=int(first[0]))
    assert (out[0] == first[0]).all()  # row 0 emitted eos first: the rest is eos


def test_banned_tokens_are_never_produced(gpt, prefix):
    idx = torch.tensor([PROMPTS[0]])
    free = generate(gpt, idx, 10, prefix=prefix(1), temperature=0)[0].tolist()
    banned = generate(gpt, idx, 10, prefix=prefix(1), temperature=0, banned_ids=free[:2])[0].tolist()
    assert not set(banned) & set(free[:2])
    assert not set(beam_search(gpt, idx, 10, 3, eos_id=EOS, prefix=prefix(1), banned_ids=free[:2])[0]) & set(free[:2])


def test_a_float32_prefix_keeps_a_bfloat16_cache_in_bfloat16(gpt, prefix):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache, idx, mask = prefix.export().start_decoding(gpt, torch.tensor([PROMPTS[0]]), None)
        gpt(idx, cache=cache, last_only=True)
        gpt(idx[:, -1:], cache=cache)
    assert prefix.export().table.dtype == torch.float32
    assert all(k.dtype == v.dtype == torch.bfloat16 for k, v in cache.layers)


def test_top_k_and_top_p_sample_only_from_their_sets():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    g = torch.Generator().manual_seed(0)
    assert {int(next_token(scores, 1.0, 2, None, g)) for _ in range(200)} == {0, 1}
    assert {int(next_token(scores, 1.0, None, 0.75, g)) for _ in range(200)} == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert {int(next_token(scores, 1.0, None, 0.5, g)) for _ in range(200)} == {0}
    assert int(next_token(scores, 0.0, None, None)) == 0
    draws = [int(next_token(scores, 1.0, None, None, torch.Generator().manual_seed(5))) for _ in range(3)]
    assert len(set(draws)) == 1  # seeded: reproducible


def test_temperature_sharpens_and_flattens():
    scores = torch.log(torch.tensor([[0.6, 0.4]]))
    g = torch.Generator().manual_seed(0)
    cold = sum(int(next_token(scores, 0.1, None, None, g)) for _ in range(400))
    hot = sum(int(next_token(scores, 5.0, None, None, g)) for _ in range(400))
    assert cold < 20 and 150 < hot < 250


# ---- sample.py --------------------------------------------------------------------------------------------------

def test_sample_from_a_table_and_from_a_file(trained_run, tmp_path):
    result = run_script("sample.py", "--out_dir", trained_run, "--start", "name : Aromi | Type : pub",
                        "--max_new_tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("name : Aromi | Type : pub\n  -> ")
    tables = tmp_path / "tables.txt"
    tables.write_text("name : Aromi | Type : pub\nname : Cotto | food : Indian\n", encoding="utf-8")
    result = run_main(sample.main, "--out_dir", trained_run, "--start", f"FILE:{tables}", "--num_beams", "1",
                        "--temperature", "0.8", "--top_k", "20", "--max_new_tokens", "8",
                        "--output", tmp_path / "texts.txt")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "texts.txt").read_text(encoding="utf-8").splitlines()) == 2


def test_decoding_into_a_log_reports_every_tenth(trained_run, tmp_path, monkeypatch):
    """Output that is not a terminal (CI, a log file) gets a progress line per tenth of the tables decoded."""
    from common.progress import Progress
    monkeypatch.setattr(Progress, "quiet_seconds", 0)  # the tiny model decodes in well under the quiet 2 s
    tables = tmp_path / "tables.txt"
    tables.write_text("name : Aromi | Type : pub\n" * 20, encoding="utf-8")
    result = run_main(sample.main, "--out_dir", trained_run, "--start", f"FILE:{tables}", "--batch_size", "2",
                      "--num_beams", "1", "--max_new_tokens", "4", "--output", tmp_path / "texts.txt")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("decoding: ")]
    assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]
    assert " tables/s | " in lines[0] and lines[0].endswith(" left") and lines[-1].endswith(" elapsed")


def test_sample_scores_a_split_in_the_papers_layout(trained_run, tmp_path):
    result = run_main(sample.main, "--out_dir", trained_run, "--split", "dev", "--max_examples", "6",
                        "--max_new_tokens", "10", "--no-coco", "--output", tmp_path / "dev.txt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"e2e dev: 6 tables, beam 5, decoded {trained_run / 'prefix.safetensors'}"
    assert lines[1].split() == ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    assert len((tmp_path / "dev.txt").read_text(encoding="utf-8").splitlines()) == 6


def test_a_split_leaves_an_evaluation_that_rescoring_reproduces(trained_run, e2e_dir, tmp_path):
    """out_dir/eval/e2e-dev/: tables and hypotheses line by line, references in e2e-metrics' format, scores.json;
    --hypotheses scores those texts again to the same numbers, and --start FILE: decodes the tables line by line."""
    import json
    from data import load_examples
    run = tmp_path / "run"
    run.mkdir()
    for name in ("ckpt.pt", "prefix.safetensors"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    result = run_main(sample.main, "--out_dir", run, "--split", "dev", "--max_examples", "7", "--max_new_tokens",
                        "10", "--no-coco", "--output", tmp_path / "dev.txt")
    assert result.returncode == 0, result.stderr
    folder = run / "eval" / "e2e-dev"
    assert sorted(p.name for p in folder.iterdir()) == ["hypotheses.txt", "references.txt", "scores.json",
                                                        "tables.txt"]
    examples = load_examples("e2e", "dev", e2e_dir)[:7]
    assert (folder / "tables.txt").read_text(encoding="utf-8").splitlines() == [ex.table for ex in examples]
    hypotheses = (folder / "hypotheses.txt").read_text(encoding="utf-8")
    assert hypotheses == (tmp_path / "dev.txt").read_text(encoding="utf-8") and len(hypotheses.splitlines()) == 7
    groups = (folder / "references.txt").read_text(encoding="utf-8").split("\n\n")
    assert groups[-1] == "" and [g.split("\n") for g in groups[:-1]] == [list(ex.references) for ex in examples]
    decoded = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    assert decoded["scores"].keys() == {"BLEU", "NIST"} and decoded["tables"] == 7
    assert decoded["decoded"] == str(run / "prefix.safetensors")
    assert decoded["decoding"] | {"device": "auto"} == {
        "prefix": "final", "init_from": decoded["decoding"]["init_from"], "num_beams": 5, "length_penalty": 1.0,
        "min_length": 5, "max_new_tokens": 10, "ban_newlines": True, "temperature": 0.0, "top_k": None, "top_p": None,
        "seed": 1337, "dtype": "float32", "device": "auto", "batch_size": 10, "max_examples": 7}

    (tmp_path / "texts.txt").write_text(hypotheses, encoding="utf-8")
    result = run_main(sample.main, "--out_dir", run, "--split", "dev", "--max_examples", "7", "--no-coco",
                        "--hypotheses", tmp_path / "texts.txt", "--device", "nonsense")  # no model is loaded
    assert result.returncode == 0, result.stderr
    rescored = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    assert rescored["scores"] == decoded["scores"] and rescored["texts_from"] == str(tmp_path / "texts.txt")

    result = run_main(sample.main, "--out_dir", run, "--start", f"FILE:{folder / 'tables.txt'}",
                        "--max_new_tokens", "10", "--batch_size", "3", "--output", tmp_path / "again.txt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "again.txt").read_text(encoding="utf-8") == hypotheses


def test_sample_decodes_the_final_export_unless_told_best(trained_run, tmp_path):
    """The authors decode the model at the end of training; --prefix best takes the best validation loss's."""
    for flags, export in (((), "prefix.safetensors"), (("--prefix", "best"), "prefix_best.safetensors")):
        result = run_main(sample.main, "--out_dir", trained_run, "--split", "dev", "--max_examples", "1",
                            "--max_new_tokens", "2", "--no-coco", *flags)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].endswith(f"decoded {trained_run / export}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "prefix.safetensors").write_bytes((trained_run / "prefix.safetensors").read_bytes())
    final = run_main(sample.main, "--out_dir", run, "--start", "name : Aromi", "--max_new_tokens", "8")
    assert final.returncode == 0, final.stderr
    result = run_main(sample.main, "--out_dir", run, "--start", "name : Aromi", "--prefix", "best")
    assert result.returncode == 2 and "holds no best export of a trained method; it holds prefix.safetensors: " \
                                      "pass --prefix final" in result.stderr
    (run / "prefix.safetensors").rename(run / "prefix_best.safetensors")
    result = run_main(sample.main, "--out_dir", run, "--start", "name : Aromi")
    assert result.returncode == 2 and "holds no final export of a trained method nor ckpt.pt; it holds " \
                                      "prefix_best.safetensors: pass --prefix best" in result.stderr
    best = run_main(sample.main, "--out_dir", run, "--start", "name : Aromi", "--max_new_tokens", "8",
                      "--prefix", "best")
    assert best.returncode == 0 and best.stdout == final.stdout
    args = sample.parse_args(["--start", "x"])
    assert (args.prefix, args.dtype, args.min_length, args.length_penalty) == ("final", "float32", 5, 1.0)


def test_a_prefix_is_not_decoded_on_another_datasets_split(trained_run, tmp_path):
    from prefix import prefix_metadata
    assert prefix_metadata(trained_run / "prefix.safetensors")["dataset"] == "e2e"
    run = tmp_path / "run"  # no ckpt.pt: the export's metadata alone says what it was trained on
    run.mkdir()
    (run / "prefix.safetensors").write_bytes((trained_run / "prefix.safetensors").read_bytes())
    for out_dir in (trained_run, run):
        result = run_main(sample.main, "--out_dir", out_dir, "--split", "dev", "--dataset", "webnlg")
        assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
        assert "was trained on e2e, not webnlg; decoding it on webnlg dev is refused" in result.stderr


def test_the_java_hint_names_a_flag_sample_py_has(monkeypatch):
    import re
    from common import UserError
    from metrics import coco, coco_scores
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)  # no Java
    with pytest.raises(UserError) as e:
        coco_scores(["a text"], [["a text"]])
    flags = re.findall(r"sample\.py (--[\w-]+)", str(e.value))
    assert flags == ["--no-coco"] and sample.parse_args(["--split", "dev", *flags]).coco is False


def test_sample_decodes_an_infix_run(tiny_gpt2, e2e_dir, tmp_path):
    """An infix sits between each table and its text, also when sample.py decodes a batch of tables."""
    result = run_main(train.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir, "--out_dir",
                        tmp_path, "--variant", "infix", "--max_iters", "4", "--eval_interval", "4", "--eval_iters", "1")
    assert result.returncode == 0, result.stderr
    result = run_main(sample.main, "--out_dir", tmp_path, "--split", "dev", "--max_examples", "3",
                        "--max_new_tokens", "5", "--no-coco")
    assert result.returncode == 0, result.stderr
    assert "e2e dev: 3 tables" in result.stdout


def test_sample_falls_back_to_the_training_checkpoint(trained_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "ckpt.pt", run / "ckpt.pt")
    from_ckpt = run_main(sample.main, "--out_dir", run, "--start", "name : Aromi", "--max_new_tokens", "6")
    from_export = run_main(sample.main, "--out_dir", trained_run, "--prefix", "final", "--start", "name : Aromi",
                             "--max_new_tokens", "6")
    assert from_ckpt.returncode == 0, from_ckpt.stderr
    assert from_ckpt.stdout == from_export.stdout


def test_sample_decodes_with_a_peft_adapter_as_peft_does(tiny_gpt2, tokenizer, tmp_path):
    """An adapter made by PEFT (prefix tuning on transformers' GPT-2): our greedy text is the one PEFT's forward pass
    picks token by token. (Not PEFT's generate: under transformers 5 it drops the prefix, warning that it ignores
    past_key_values.)"""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import GPT2LMHeadModel
    from data import prompt_ids
    torch.manual_seed(0)
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    peft_model = get_peft_model(GPT2LMHeadModel.from_pretrained(str(tiny_gpt2)), config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")  # it names tiny_gpt2 as its base model
    table = "name : Aromi | Type : pub | area : city centre"
    result = run_main(sample.main, "--peft_adapter", tmp_path / "adapter", "--start", table, "--num_beams", "1",
                        "--max_new_tokens", "12", "--no-ban_newlines")
    assert result.returncode == 0, result.stderr
    sequence, eot = prompt_ids(tokenizer, table), tokenizer.eot_token
    with torch.no_grad():
        for _ in range(12):
            sequence.append(int(peft_model(input_ids=torch.tensor([sequence])).logits[0, -1].argmax()))
            if sequence[-1] == eot:
                break
    tokens = sequence[len(prompt_ids(tokenizer, table)):]
    expected = tokenizer.decode([t for t in tokens if t != eot]).strip()
    assert expected and result.stdout == f"{table}\n  -> {expected}\n"


@pytest.mark.parametrize("make_args,message", [
    (lambda run, tmp: ["--out_dir", tmp / "missing", "--start", "x"], "there is no training run at"),
    (lambda run, tmp: ["--out_dir", run, "--start", "FILE:" + str(tmp / "empty.txt")], "holds no tables"),
    (lambda run, tmp: ["--out_dir", run, "--start", "FILE:" + str(tmp / "gap.txt")],
     "line 2 of {tmp}/gap.txt is blank; give one table on every line"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--hypotheses", str(tmp / "gap.txt")], "give --split too"),
    (lambda run, tmp: ["--out_dir", run, "--split", "dev", "--max_examples", "2", "--hypotheses", str(tmp / "gap.txt")],
     "holds 3 lines, but there are 2 tables"),
    (lambda run, tmp: ["--out_dir", run, "--start", "FILE:" + str(tmp / "nope.txt")], "could not read the tables"),
    (lambda run, tmp: ["--out_dir", run], "give either --start"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--temperature", "0.7"], "need --num_beams 1"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--num_beams", "0"], "--num_beams must be a positive"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--num_beams", "1", "--top_k", "0"],
     "--top_k must be a positive integer"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--num_beams", "1", "--temperature", "-1"],
     "--temperature must be 0 or more"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--num_beams", "1", "--temperature", "1", "--top_p", "1.5"],
     "--top_p must be above 0"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--output", tmp], "must name a file in an existing"),
    (lambda run, tmp: ["--out_dir", run, "--start", "x", "--num_b", "3"], "unrecognized arguments: --num_b"),
    (lambda run, tmp: ["--out_dir", tmp / "damaged", "--start", "x"], "ckpt.pt could not be read"),
])
def test_sample_bad_input_is_one_sentence(trained_run, tmp_path, make_args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "gap.txt").write_text("name : Aromi\n \nname : Cotto\n")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "ckpt.pt").write_bytes(b"not a checkpoint")
    result = run_main(sample.main, *make_args(trained_run, tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message.format(tmp=tmp_path) in result.stderr and result.stderr.count("\n") == 1


def test_sample_refuses_a_prefix_trained_for_another_model_shape(trained_run, tmp_path):
    from hub_checkpoint import random_hf_gpt2, write_checkpoint
    other = write_checkpoint(random_hf_gpt2(n_layer=3, n_head=2, n_embd=32, vocab_size=50257, n_positions=256),
                             tmp_path / "other")
    result = run_main(sample.main, "--out_dir", trained_run, "--init_from", other, "--start", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was trained for" in result.stderr and "--init_from" in result.stderr
