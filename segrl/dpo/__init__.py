"""ASR-DPO on TRL: :class:`ASRDPOTrainer` / :class:`ASRDPOConfig` (arXiv 2411.00809, docs/method.md#asr-mask, #dpo).

Switching from TRL is one import::

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer   # instead of: from trl import DPOConfig, DPOTrainer
"""

from segrl.dpo.collator import DataCollatorForASRPreference
from segrl.dpo.config import ASRDPOConfig
from segrl.dpo.layout import (
    ResponseSpan,
    from_input_layout,
    from_logp_layout,
    response_span,
    to_input_layout,
    to_logp_layout,
)
from segrl.dpo.trainer import ASRDPOTrainer

__all__ = [
    "ASRDPOConfig",
    "ASRDPOTrainer",
    "DataCollatorForASRPreference",
    "ResponseSpan",
    "from_input_layout",
    "from_logp_layout",
    "response_span",
    "to_input_layout",
    "to_logp_layout",
]
