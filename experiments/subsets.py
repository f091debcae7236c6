"""Low-data training sets as the authors made them: files. Each is a folder that train.py's --data_dir reads like
the E2E release, with a random subset of its training rows (one row: a table and one of its texts) and the
release's dev and test splits; so the subset and train.py's --seed (the prefix's start, the data order) vary apart.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from common import atomic_path
from data.e2e import SPLIT_FILES, ZIP_NAME, read_rows, source_files


def training_subset(e2e_dir: Path, size: int, subset: int, folder: Path) -> Path:
    """`folder` holding `size` training rows drawn by the number `subset`, and the release's dev and test splits
    (links to its files); made once."""
    if (folder / SPLIT_FILES["train"]).exists():
        return folder
    rows, _ = read_rows("train", e2e_dir)
    chosen = np.sort(np.random.default_rng(subset).choice(len(rows), size, replace=False))  # kept in file order
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        [source] = source_files(split, e2e_dir)
        link = folder / (ZIP_NAME if source.suffix == ".zip" else SPLIT_FILES[split])
        if not link.exists():
            link.symlink_to(source.resolve())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerows([("mr", "ref"), *((rows[i][1], rows[i][2]) for i in chosen)])
    with atomic_path(folder / SPLIT_FILES["train"]) as tmp:  # written last: its presence means the folder is whole
        tmp.write_text(text.getvalue(), encoding="utf-8")
    return folder
