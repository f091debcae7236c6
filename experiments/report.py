"""The miniature's results: results.json (every run with its curve), results.md (the tables, the probes, one line
per claim of the paper) and the figures."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from common import UserError, atomic_path
from common.figures import pyplot, save_png
from common.progress import format_duration
from data import load_examples
from experiments.runner import Run, Setup, format_rate

E2E_STEPS_PER_EPOCH = 4207  # 42,061 training pairs in batches of 10 (train.py's E2E default)
METRICS = (("BLEU", 1), ("NIST", 2), ("METEOR", 1), ("ROUGE-L", 1), ("CIDEr", 2))
PARITY = 1.0  # BLEU: "on par" allows prefix-tuning this far below fine-tuning (the paper's Table 2: at worst 0.3 below, DART on GPT-2 large)


def run_record(run: Run) -> dict:
    """A run as results.json keeps it: its curve is [iteration, dev loss, BLEU on the curve's tables (null where
    not decoded), training seconds so far (null where not measured)] per evaluation."""
    r = run.result
    return {"name": run.name, "label": run.label, "stage": run.stage, "lm": run.lm, "mode": run.mode,
            "flags": run.flags, "learning_rate": run.rate, "schedule_iters": run.iters, "iterations": r["end"],
            "stopped_early": r["stopped_early"], "kept": r.get("kept"), "curve": r["curve"],
            "train_s": r["train_s"], "decode_s": r["decode_s"], "wall_s": r["train_s"] + r["decode_s"],
            "scores": r.get("scores", {}), "parameters": r.get("parameters"),
            **({"texts": r["texts"]} if run.main_table else {})}


def write_results(summary: dict, runs: list[Run], probes: dict, budget, setup: Setup, results_dir: Path) -> None:
    pretraining = {lm: json.loads((setup.work / f"{lm}.json").read_text()) for lm in budget.lms}
    records = [run_record(run) for run in runs]
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / "results.json") as tmp:
        tmp.write_text(json.dumps({**summary, "pretraining": pretraining, "probes": probes, "runs": records},
                                  indent=1))
    with atomic_path(results_dir / "results.md") as tmp:
        tmp.write_text(markdown(records, probes, budget, pretraining, summary, setup), encoding="utf-8")
    figures(records, budget, pretraining, results_dir)


# ---- the tables ---------------------------------------------------------------------------------------------

def markdown(records: list[dict], probes: dict, budget, pretraining: dict, summary: dict, setup: Setup) -> str:
    main = [r for r in records if r["lm"] == budget.main_lm and r["stage"] in ("converged", "short")
            and "length-" not in r["name"]]
    tables = [ex.table for ex in load_examples("e2e", "test", setup.e2e_dir)]
    lines = header(records, budget, pretraining, summary)
    lines += main_table(main, budget, tables)
    lines += curves_table(records, budget)
    lines += scale_table(records, budget, pretraining)
    lines += low_data_table(records, budget)
    lines += sweep_table(records, budget)
    lines += probes_table(probes)
    lines += claims(records, budget)
    lines += outputs(main, tables)
    return "\n".join(lines) + "\n"


def epochs(iters: int) -> str:
    return f"{iters / E2E_STEPS_PER_EPOCH:.2f} epoch"


def header(records: list[dict], budget, pretraining: dict, summary: dict) -> list[str]:
    converged, short = budget.converged_iters, budget.short_iters
    estimated = summary["estimated_s"]
    return [
        "# E2E in miniature: small GPT-2s pretrained on this machine, not the paper's GPT-2 medium", "",
        f"LMs: {', '.join(budget.lms)} (layers × width), pretrained by experiments/pretrain_small.py; the main one "
        f"is {budget.main_lm}. Converged protocol: {converged} iterations of batch 10 ({epochs(converged)} of E2E "
        f"train; the paper trains 5), linear decay to zero, {budget.converged_evals} evaluations (dev loss on "
        f"{budget.eval_iters} batches; beam-5 BLEU on the first {budget.curve_tables} test tables), stopped early "
        f"only when none of the last 3 evaluations after half the schedule improved the best dev loss by 0.2%. "
        f"Shorter rows: {short} iterations ({epochs(short)}). Low data: {budget.low_data_iters} iterations "
        f"({budget.low_data_warmup} of warmup), evaluated every {budget.low_data_eval_every}, the best by dev loss "
        f"decoded. Each learning rate is chosen by probes at its own budget (see Learning rates).", "",
        f"Cost: this call trained and decoded for {format_duration(summary['total_s_this_call'])} (pretraining "
        f"{format_duration(summary['pretrain_s_this_call'])}); all runs together "
        f"{format_duration(sum(r['wall_s'] for r in records))} of train.py and sample.py. The plan's estimate: "
        + ", ".join(f"{stage} {format_duration(s)}" for stage, s in estimated.items()) + ".", ""]


def share(count: int, parameters: dict) -> str:
    return f"{count:,} ({100 * count / parameters['gpt']:.2f}%)"


def cell(scores: dict, metric: str, decimals: int) -> str:
    return f"{scores[metric]:.{decimals}f}" if metric in scores else "-"


def budget_cell(record: dict) -> str:
    end = record["iterations"]
    stopped = f", stopped early at {end}" if record["stopped_early"] else ""
    return f"{record['schedule_iters']} ({epochs(record['schedule_iters'])}{stopped})"


def main_table(main: list[dict], budget, tables: list[str]) -> list[str]:
    lines = ["## Main table", "", f"Each run at its end, on {budget.test_tables or 630} E2E test tables. Budget: "
             "the schedule's training iterations (the converged protocol, or the shorter one).", "",
             "| method | budget | trainable | stored | " + " | ".join(m for m, _ in METRICS)
             + " | names the restaurant | training | decoding |", "|---|---|---|---|" + "---|" * len(METRICS)
             + "---|---|---|"]
    for r in main:
        p = r["parameters"]
        lines.append(f"| {r['label']} | {budget_cell(r)} | {share(p['trainable'], p)} | {share(p['stored'], p)} | "
                     + " | ".join(cell(r["scores"], m, d) for m, d in METRICS)
                     + f" | {100 * names_copied(r['texts'], tables):.0f}% | {format_duration(r['train_s'])} | "
                       f"{format_duration(r['decode_s'])} |")
    return lines + [""]


def curves_table(records: list[dict], budget) -> list[str]:
    """BLEU on the curve's tables (dev loss) at each evaluation of the main LM's converged runs."""
    runs = [r for r in records if r["stage"] == "converged" and r["lm"] == budget.main_lm]
    points = sorted({p[0] for r in runs for p in r["curve"]})
    lines = [f"## BLEU along training ({budget.main_lm}, first {budget.curve_tables} test tables; dev loss)", "",
             "| iteration | epoch | " + " | ".join(r["label"] for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for it in points:
        cells = [next((f"{p[2]:.1f} ({p[1]:.3f})" for p in r["curve"] if p[0] == it), "-") for r in runs]
        lines.append(f"| {it} | {it / E2E_STEPS_PER_EPOCH:.2f} | " + " | ".join(cells) + " |")
    return lines + ["", "![BLEU against iterations and wall time](bleu_vs_iterations.png)", ""]


def end_bleu(record: dict) -> float:
    """BLEU on the curve's tables at the run's end (the same tables for every LM)."""
    return record["curve"][-1][2]


def scale_rows(records: list[dict], budget) -> list[tuple[str, dict[str, dict]]]:
    """(LM, {mode: its converged run}) for each LM, smallest first."""
    return [(lm, {r["mode"]: r for r in records if r["stage"] == "converged" and r["lm"] == lm
                  and r["name"] in ("prefix", "finetune", "lora")}) for lm in budget.lms]


def scale_table(records: list[dict], budget, pretraining: dict) -> list[str]:
    modes = [m for m in ("prefix", "finetune", "lora") if all(m in runs for _, runs in scale_rows(records, budget))]
    lines = [f"## LM scale (converged protocol, BLEU on the first {budget.curve_tables} test tables)", "",
             "| LM | parameters | held-out loss | copy accuracy | " + " | ".join(f"{m} BLEU" for m in modes)
             + " | prefix − fine-tuning |", "|---|---|---|---|" + "---|" * (len(modes) + 1)]
    for lm, runs in scale_rows(records, budget):
        last = pretraining[lm]["history"][-1]
        gap = end_bleu(runs["prefix"]) - end_bleu(runs["finetune"])
        lines.append(f"| {lm} | {runs['prefix']['parameters']['gpt']:,} | {last['val_loss']:.2f} | "
                     f"{last['copy_accuracy']:.2f} | " + " | ".join(f"{end_bleu(runs[m]):.1f}" for m in modes)
                     + f" | {gap:+.1f} |")
    return lines + ["", "![BLEU against the LM's size](bleu_vs_lm_size.png)", ""]


def low_data_cells(records: list[dict], variant: str, size: int) -> list[float]:
    return [r["scores"]["BLEU"] for r in records
            if r["stage"] == "low data" and r["name"].startswith(f"lowdata-{variant}-{size}-")]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
        f"{values[0]:.1f}" if values else "-"


LOW_DATA_ROWS = (("prefix", "prefix-tuning, random init"), ("prefix-init", "prefix-tuning, real-word init"),
                 ("finetune", "fine-tuning"))


def low_data_table(records: list[dict], budget) -> list[str]:
    n = budget.subsets * len(budget.seeds)
    lines = [f"## Low data (BLEU, mean ± standard deviation over {budget.subsets} subsets × {len(budget.seeds)} "
             f"seeds = {n} runs; first {budget.curve_tables} test tables)", "",
             "| training pairs | " + " | ".join(label for _, label in LOW_DATA_ROWS) + " |",
             "|---|" + "---|" * len(LOW_DATA_ROWS)]
    for size in budget.sizes:
        lines.append(f"| {size} | " + " | ".join(mean_std(low_data_cells(records, v, size))
                                                 for v, _ in LOW_DATA_ROWS) + " |")
    return lines + ["", "![BLEU against training pairs](bleu_vs_examples.png)", ""]


def prefix_lengths(records: list[dict], budget) -> list[tuple[int, dict]]:
    found = [(int(r["flags"][r["flags"].index("--prefix_len") + 1]), r) for r in records
             if r["stage"] == "converged" and r["lm"] == budget.main_lm
             and (r["name"] == "prefix" or r["name"].startswith("length-"))]
    return sorted(found, key=lambda pair: pair[0])


def sweep_table(records: list[dict], budget) -> list[str]:
    by_name = {r["name"]: r for r in records if r["stage"] == "converged" and r["lm"] == budget.main_lm}
    lines = [f"## Prefix vs infix, and the prefix length (converged protocol, BLEU on the first "
             f"{budget.curve_tables} test tables)", "", "| method | stored | BLEU | dev loss |", "|---|---|---|---|"]
    rows = [r for _, r in prefix_lengths(records, budget)] + [by_name["infix"], by_name["embedding-only"]]
    for r in rows:
        lines.append(f"| {r['label']} | {share(r['parameters']['stored'], r['parameters'])} | {end_bleu(r):.1f} | "
                     f"{r['curve'][-1][1]:.3f} |")
    return lines + ["", "![BLEU against the prefix length](bleu_vs_prefix_length.png)", ""]


def probes_table(probes: dict) -> list[str]:
    lines = ["## Learning rates: the lowest dev loss of each probe up to its iteration (the lowest is chosen)", "",
             "| method | probed to | rate: dev loss | chosen | worse on both sides |", "|---|---|---|---|---|"]
    for name, p in probes.items():
        cells = ", ".join(f"{format_rate(rate)}: {loss:.3f}" for rate, loss in p["rates"])
        lines.append(f"| {name} | {p['until']} | {cells} | {format_rate(p['chosen'])} | "
                     f"{'no: at the edge' if p['at_edge'] else 'yes'} |")
    return lines + [""]


def claims(records: list[dict], budget) -> list[str]:
    """One line per claim of the paper: whether it holds here, at which LM, with the number."""
    by_name = {r["name"]: r for r in records if r["lm"] == budget.main_lm and r["stage"] == "converged"}
    main = budget.main_lm
    gaps = [(lm, end_bleu(runs["prefix"]) - end_bleu(runs["finetune"])) for lm, runs in scale_rows(records, budget)]
    parity = [lm for lm, gap in gaps if gap >= -PARITY]
    lines = ["## The paper's claims, here", "",
             f"- Parity with fine-tuning (within {PARITY:.0f} BLEU): "
             + ("holds at " + ", ".join(parity) if parity else "does not hold at any LM") + "; prefix − fine-tuning "
             + ", ".join(f"{gap:+.1f} at {lm}" for lm, gap in gaps) + "."]
    wins = []
    for size in budget.sizes:
        best = max(("prefix", "prefix-init"), key=lambda v: statistics.mean(low_data_cells(records, v, size)))
        gap = statistics.mean(low_data_cells(records, best, size)) - statistics.mean(
            low_data_cells(records, "finetune", size))
        wins.append((size, gap, best))
    held = [size for size, gap, _ in wins if gap > 0]
    lines.append(f"- Low-data advantage ({main}): " + (f"holds at {', '.join(map(str, held))} pairs" if held else
                                                        "does not hold at any size")
                 + "; the better prefix row − fine-tuning " + ", ".join(f"{gap:+.1f} at {size}"
                                                                         for size, gap, _ in wins) + ".")
    deep, shallow = by_name["prefix"]["scores"]["BLEU"], by_name["embedding-only"]["scores"]["BLEU"]
    lines.append(f"- Deep prefix > embedding-only ({main}): {'holds' if deep > shallow else 'does not hold'}; "
                 f"BLEU {deep:.1f} vs {shallow:.1f}.")
    infix = by_name["infix"]["scores"]["BLEU"]
    lines.append(f"- Prefix > infix ({main}): {'holds' if deep > infix else 'does not hold'}; BLEU {deep:.1f} vs "
                 f"{infix:.1f}.")
    lengths = [(n, end_bleu(r)) for n, r in prefix_lengths(records, budget)]
    up_to_10 = [bleu for n, bleu in lengths if n <= 10]
    beyond = [bleu for n, bleu in lengths if n > 10]
    rises = all(a < b for a, b in zip(up_to_10, up_to_10[1:]))
    levels = all(bleu <= up_to_10[-1] + PARITY for bleu in beyond)
    lines.append(f"- Length trade-off, better up to P = 10 and no better beyond ({main}): "
                 f"{'holds' if rises and levels else 'does not hold'}; BLEU "
                 + ", ".join(f"{bleu:.1f} at P = {n}" for n, bleu in lengths) + ".")
    return lines + [""]


def names_copied(texts: list[str], tables: list[str]) -> float:
    """The share of texts that contain their table's restaurant name, as written in the table."""
    names = [table.split(" | ")[0].removeprefix("name : ") for table in tables]
    return sum(name in text for name, text in zip(names, texts)) / max(1, len(texts))


def outputs(main: list[dict], tables: list[str]) -> list[str]:
    lines = ["## Outputs beside their tables (five test tables, evenly spaced)", ""]
    shown = [r for r in main if r["name"] in ("prefix", "finetune", "adapter-0.1", "lora")]
    decoded = min(len(r["texts"]) for r in shown)
    for i in sorted({round(k * (decoded - 1) / 4) for k in range(5)}):
        lines += [f"- `{tables[i]}`"] + [f"  - {r['label']}: {r['texts'][i]}" for r in shown]
    return lines


# ---- the figures ----------------------------------------------------------------------------------------------

def figures(records: list[dict], budget, pretraining: dict, results_dir: Path) -> None:
    """BLEU against iterations and wall time, against the LM's size, against training pairs and the prefix
    length; dev loss curves: PNGs (needs matplotlib)."""
    try:
        plt = pyplot()
    except UserError as e:
        print(f"no figures: {e}")
        return
    title = "\nsmall GPT-2s pretrained here, not the paper's"
    converged = [r for r in records if r["stage"] == "converged" and r["lm"] == budget.main_lm
                 and r["name"] in ("prefix", "finetune", "lora")]
    fig, (by_iter, by_time) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for r in converged:
        curve = r["curve"]
        by_iter.plot([p[0] for p in curve], [p[2] for p in curve], marker="o", label=r["label"])
        by_time.plot([p[3] / 60 for p in curve], [p[2] for p in curve], marker="o", label=r["label"])
    by_iter.set(xlabel="training iteration", ylabel=f"BLEU (first {budget.curve_tables} test tables)",
                title=f"BLEU along training ({budget.main_lm}){title}")
    by_time.set(xlabel="training wall time (minutes, this machine)")
    by_iter.legend(fontsize=8)
    save_figure(fig, results_dir / "bleu_vs_iterations.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = scale_rows(records, budget)
    sizes = [runs["prefix"]["parameters"]["gpt"] for _, runs in rows]
    for mode, label in (("prefix", "prefix-tuning"), ("finetune", "fine-tuning"), ("lora", "LoRA")):
        if all(mode in runs for _, runs in rows):
            ax.plot(sizes, [end_bleu(runs[mode]) for _, runs in rows], marker="o", label=label)
    ax.plot(sizes, [end_bleu(runs["prefix"]) - end_bleu(runs["finetune"]) for _, runs in rows], "k--", marker="x",
            label="prefix − fine-tuning")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set(xscale="log", xlabel="LM parameters", ylabel="BLEU", title=f"LM scale: {title}")
    ax.legend(fontsize=7)
    save_figure(fig, results_dir / "bleu_vs_lm_size.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for variant, label in LOW_DATA_ROWS:
        means = [statistics.mean(low_data_cells(records, variant, n)) for n in budget.sizes]
        ax.plot(budget.sizes, means, marker="o", label=label)
    ax.set(xscale="log", xlabel="training pairs", ylabel="BLEU (E2E test)", title=f"Low data: {title}")
    ax.set_xticks(budget.sizes, [str(n) for n in budget.sizes], minor=False)
    ax.minorticks_off()
    ax.legend(fontsize=7)
    save_figure(fig, results_dir / "bleu_vs_examples.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    lengths = prefix_lengths(records, budget)
    ax.plot([n for n, _ in lengths], [end_bleu(r) for _, r in lengths], marker="o")
    ax.set(xlabel="prefix length P", ylabel="BLEU (E2E test)", title=f"Prefix length: {title}")
    save_figure(fig, results_dir / "bleu_vs_prefix_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in (r for r in records if r["stage"] in ("converged", "short") and r["lm"] == budget.main_lm):
        ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], marker=".", label=r["label"])
    ax.set(xlabel="iteration", ylabel="validation loss per token", title=f"E2E dev loss: {title}")
    ax.legend(fontsize=7)
    save_figure(fig, results_dir / "loss_curves.png")


def save_figure(fig, path: Path) -> None:
    fig.axes[0].title.set_fontsize(10)
    fig.tight_layout()
    save_png(fig, path, dpi=120)
