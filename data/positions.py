"""The long-row rule, the same for every dataset: a training row that, after the prefix, needs more positions than
the model's position table has is refused with where it comes from and its length, or, when the user asks, left out
and counted (Sequences.skipped, which the data statistics print)."""
import numpy as np

from common import UserError
from data.datasets import load_examples
from data.tokens import Sequences


def rows_that_fit(sequences: Sequences, prefix_len: int, block_size: int, skip: bool, dataset: str, split: str,
                  data_dir=None, text_form: str = "official") -> Sequences:
    """The split's sequences if every one fits the model: the model reads all of a row but its last token, after
    prefix_len prefix positions. Otherwise, with skip, the rows that fit; without, a UserError naming the first
    row that does not (the split is read again only then, to find where that row comes from)."""
    fits = prefix_len + sequences.lengths - 1 <= block_size
    too_long = np.flatnonzero(~fits)
    if not len(too_long):
        return sequences
    if skip and len(too_long) < len(sequences):
        return sequences.select(np.flatnonzero(fits), len(too_long))
    if skip:
        raise UserError(f"no row of the {dataset} {split} split fits the model's {block_size} positions after a "
                        f"prefix of {prefix_len}; use a model with a longer position table or a shorter --prefix_len")
    row = int(too_long[0])
    places = [place for ex in load_examples(dataset, split, data_dir, for_training=True, text_form=text_form)
              for place in ex.places]
    length = int(sequences.lengths[row])
    raise UserError(f"{places[row]} makes a training row of {length} tokens, which with the prefix of {prefix_len} "
                    f"needs {prefix_len + length - 1} of the model's {block_size} positions; shorten it, or pass "
                    f"--skip_long_rows to leave out the {len(too_long):,} row(s) of the {split} split that do not fit")
