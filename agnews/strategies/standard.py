"""Standard fine-tuning: cross-entropy on gold labels, AdamW, linear warm-up/decay (all in the base module)."""

from agnews.strategies.base import ClassificationModule


class StandardFineTuning(ClassificationModule):
    """Plain supervised fine-tuning; the reference every other strategy is measured against."""
