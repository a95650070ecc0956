"""Synthetic data for the demo, the tests and the benchmarks (not part of the installed library):
an xP3-style multilingual corpus, xP3-like pair lengths, and a small BPE tokenizer trained on it,
so nothing is ever downloaded."""
