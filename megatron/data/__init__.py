"""Data for multitask finetuning: the Megatron indexed-dataset format, preprocessing of
xP3-style jsonl into it, and the demo corpus."""
