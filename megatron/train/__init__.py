"""Finetuning: flag groups, DeepSpeed engine set-up, data iterators, LR schedule, checkpoints,
metrics and the train loop behind `finetune_xp3.py`."""
