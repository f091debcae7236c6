"""plot.py: the training curves of one or more runs' log.jsonl as a PNG; matplotlib as an optional extra."""
import json
import sys

import pytest

import plot
import train
from conftest import assert_drawn_png, run_main
from prefix import attention


def write_log(out_dir, records, tail=""):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return out_dir


def records(iters: int, start_loss: float) -> list[dict]:
    """A log as train.py writes it: validation at 0 and every 20 iterations, a progress line every 5."""
    log = [{"iter": 0, "val_loss": start_loss}]
    for it in range(5, iters + 1, 5):
        log.append({"iter": it, "epoch": it / 100, "train_loss_per_token": start_loss - it / 50, "lr": 1e-3 * (1 - it / iters),
                    "tokens_per_s": 1000.0})
        if it % 20 == 0:
            log.append({"iter": it, "val_loss": start_loss - it / 60})
    return log


def test_two_runs_of_train_py_overlaid_in_one_png(tiny_gpt2, e2e_dir, tmp_path):
    runs = []
    for length in (2, 5):
        runs.append(tmp_path / f"len{length}")
        result = run_main(train.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir,
                            "--out_dir", runs[-1], "--prefix_len", length, "--max_iters", "12", "--eval_interval",
                            "6", "--eval_iters", "2", "--batch_size", "4", "--log_interval", "3")
        assert result.returncode == 0, result.stderr
    result = run_main(plot.main, *runs, "--output", tmp_path / "lengths.png")
    assert result.returncode == 0, result.stderr
    assert_drawn_png(tmp_path / "lengths.png")

    fig = plot.figure({str(run): plot.read_log(run) for run in runs})
    loss_ax, lr_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
        f"{run}: {curve}" for run in runs for curve in ("train", "validation")]
    for run, train_line, val, lr in zip(runs, loss_ax.lines[::2], loss_ax.lines[1::2], lr_ax.lines):
        log = [json.loads(line) for line in open(run / "log.jsonl")]
        assert list(val.get_xdata()) == [r["iter"] for r in log if "val_loss" in r] == [0, 6, 12]
        assert list(val.get_ydata()) == [r["val_loss"] for r in log if "val_loss" in r]
        assert list(train_line.get_xdata()) == list(lr.get_xdata()) == [3, 6, 9, 12]
        assert list(train_line.get_ydata()) == [r["train_loss_per_token"] for r in log if "train_loss_per_token" in r]
        assert list(lr.get_ydata()) == [r["lr"] for r in log if "lr" in r]


def test_a_torn_last_line_is_left_out(tmp_path):
    """A run killed while writing (or still writing) leaves half a line at the end; the rest is drawn."""
    run = write_log(tmp_path / "run", records(40, 5.0), tail='{"iter": 45, "train_lo')
    curves = plot.read_log(run)
    assert curves["train_loss_per_token"][0] == list(range(5, 41, 5)) and curves["val_loss"][0] == [0, 20, 40]
    assert plot.main([str(run), "--output", str(tmp_path / "p.png")]) is None
    assert_drawn_png(tmp_path / "p.png")


@pytest.mark.parametrize("make_log, message", [
    (lambda d: d.mkdir(), "there is no readable"),
    (lambda d: write_log(d, []), "holds no losses yet"),
    (lambda d: write_log(d, [{"iter": 0, "val_loss": 3.0}], tail="nonsense\n" + json.dumps({"iter": 1}) + "\n"),
     "line 2 is not JSON"),
    (lambda d: write_log(d, [{"val_loss": 3.0}]), "line 1 is not a record of train.py"),
])
def test_a_missing_or_damaged_log_is_one_sentence(tmp_path, make_log, message):
    make_log(tmp_path / "run")
    result = run_main(plot.main, tmp_path / "run", "--output", tmp_path / "p.png")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("main", [plot.main, attention.main])
def test_without_matplotlib_the_figures_name_the_install(tmp_path, monkeypatch, capsys, main):
    run = write_log(tmp_path / "run", records(20, 4.0))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if it were not installed
    with pytest.raises(SystemExit) as exit:
        main([str(run), "--output", str(tmp_path / "p.png")] if main is plot.main else
             ["--out_dir", str(run), "--start", "name : Aromi", "--output", str(tmp_path / "p.png")])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "pip install matplotlib" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()
