"""Fine-tuning, the paper's main comparison: the GPT's own weights train (the authors' --tuning_mode finetune),
or only its top blocks (FT-top2 in the paper's Table 2, their finetune-top)."""
from __future__ import annotations

import torch.nn as nn

from baselines.common import ChangesTheGPT
from common.errors import UserError
from model.gpt import GPT


class FineTuning(ChangesTheGPT):
    """Every weight of the GPT trains; with top_blocks=N only the top N transformer blocks do.

    (The authors' finetune-top also trains ln_f and the tied embedding; here FT-top2 is the two blocks alone.)
    """

    def __init__(self, gpt: GPT, top_blocks: int | None = None):
        super().__init__(gpt)
        if top_blocks is not None and top_blocks > gpt.config.n_layer:  # and at least 1: --top_blocks is positive
            raise UserError(f"--top_blocks {top_blocks} exceeds the model's {gpt.config.n_layer} blocks")
        self.top_blocks = top_blocks
        # the trained part as a submodule: its parameters are the optimizer's, its state_dict the checkpoint's
        self.trained = gpt if top_blocks is None else nn.ModuleList(gpt.transformer.h[-top_blocks:])
        self.trained.requires_grad_(True)

    def title(self) -> str:
        return "fine-tuning" if self.top_blocks is None else f"fine-tuning the top {self.top_blocks} blocks"
