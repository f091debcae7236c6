"""Training curves as a picture: train and validation loss, and the learning rate, against iterations.

    python plot.py out                                        # out/log.jsonl -> plot.png
    python plot.py out-len5 out-len10 --output lengths.png    # runs overlaid, each named by its folder

It reads the log.jsonl train.py writes in each --out_dir (one JSON object per progress line or evaluation) and
needs matplotlib, an optional extra (pip install matplotlib).
"""
import json
from pathlib import Path

from common import UserError, exit_on_user_error
from common.cli import ArgumentParser
from common.figures import pyplot, save_png

# the keys of log.jsonl drawn here: both losses per target token (train_loss is whatever --loss_reduction optimises)
CURVES = ("train_loss_per_token", "val_loss", "lr")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dirs", nargs="+", metavar="out_dir", help="training runs (train.py's --out_dir)")
    p.add_argument("--output", default="plot.png", help="the PNG to write")
    args = p.parse_args(argv)
    if Path(args.output).is_dir() or not Path(args.output).parent.is_dir():
        raise UserError(f"--output {args.output} must name a file in an existing directory")
    return args


def read_log(out_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Each curve of a run's log.jsonl as (iterations, values). A last line cut short (a run killed while writing,
    or one still writing) is left out; any other line that is not JSON is a damaged log."""
    path = out_dir / "log.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"there is no readable {path} ({type(e).__name__}); train a run with train.py "
                        f"--out_dir {out_dir} first") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UserError(f"{path} is damaged: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("iter"), int):
            raise UserError(f"{path} is damaged: line {number} is not a record of train.py (no iteration)")
        records.append(record)
    curves = {key: ([r["iter"] for r in records if key in r], [r[key] for r in records if key in r]) for key in CURVES}
    if not curves["train_loss_per_token"][0] and not curves["val_loss"][0]:
        raise UserError(f"{path} holds no losses yet; it fills as train.py runs")
    return curves


def figure(runs: dict[str, dict]):
    """Loss (train: line, validation: dots) above, the learning rate below; one colour per run."""
    plt = pyplot()
    fig, (loss_ax, lr_ax) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), height_ratios=(3, 1),
                                       layout="constrained")
    for name, curves in runs.items():
        train = loss_ax.plot(*curves["train_loss_per_token"], linewidth=1, label=f"{name}: train")
        loss_ax.plot(*curves["val_loss"], "o--", color=train[0].get_color(), markersize=4, label=f"{name}: validation")
        lr_ax.plot(*curves["lr"], color=train[0].get_color(), linewidth=1)
    loss_ax.set(ylabel="loss per target token", title="Training curves")
    loss_ax.legend(fontsize=8)
    lr_ax.set(xlabel="iteration", ylabel="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return fig


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    runs = {out_dir: read_log(Path(out_dir)) for out_dir in args.out_dirs}
    print(f"wrote {save_png(figure(runs), args.output)}")


if __name__ == "__main__":
    main()
