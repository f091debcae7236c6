"""The paper's baselines, which change the GPT itself instead of giving it a prefix: fine-tuning (all weights or the
top blocks), adapters, and LoRA. Each trains through the same train.py as prefix-tuning."""
from baselines.adapters import Adapters, adapter_dim_for_share
from baselines.common import ChangesTheGPT
from baselines.finetune import FineTuning
from baselines.lora import LoRA
from baselines.artifact import BASELINES, build_baseline, load_tuned, save_tuned

__all__ = ["ChangesTheGPT", "FineTuning", "Adapters", "LoRA", "adapter_dim_for_share", "BASELINES", "build_baseline",
           "load_tuned", "save_tuned"]
