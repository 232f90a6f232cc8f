"""Quantization-aware fine-tuning of one searched policy in its deployed form (``mpqfx finetune``)."""
