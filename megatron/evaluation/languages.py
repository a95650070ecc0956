"""The natural languages of BLOOM's pretraining corpus (ROOTS, as listed in the BLOOM paper), by
ISO 639 code: an evaluation language is "seen" if BLOOM pretrained on it, else "unseen" (the
BLOOMZ paper's split: XNLI's bg, de, el, ru, th, tr, XCOPA's et, ht, it, qu, th, tr, XStoryCloze's
my, ru and XWinograd's ja, ru are unseen). Codes are matched case-insensitively on their first part
(`zh-cn` is `zh`); `jp`, as XWinograd names Japanese, is `ja`. For a model that learned each task in some
languages only (the demo's crosslingual row), `finetuning_group` splits a task's languages into those
its finetune used and those held out of it instead."""

from __future__ import annotations

from collections.abc import Collection

BLOOM_LANGUAGES = {
    "ak": "Akan", "ar": "Arabic", "as": "Assamese", "bm": "Bambara", "bn": "Bengali", "ca": "Catalan",
    "en": "English", "es": "Spanish", "eu": "Basque", "fon": "Fon", "fr": "French", "gu": "Gujarati",
    "hi": "Hindi", "id": "Indonesian", "ig": "Igbo", "ki": "Kikuyu", "kn": "Kannada", "lg": "Luganda",
    "ln": "Lingala", "ml": "Malayalam", "mr": "Marathi", "ne": "Nepali", "nso": "Northern Sotho",
    "ny": "Chichewa", "or": "Odia", "pa": "Punjabi", "pt": "Portuguese", "rn": "Kirundi",
    "rw": "Kinyarwanda", "sn": "Shona", "st": "Sesotho", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "tn": "Setswana", "ts": "Xitsonga", "tum": "Tumbuka", "tw": "Twi", "ur": "Urdu", "vi": "Vietnamese",
    "wo": "Wolof", "xh": "isiXhosa", "yo": "Yoruba", "zh": "Chinese", "zu": "isiZulu",
}
ALIASES = {"jp": "ja"}


def base_code(language: str) -> str:
    """The lower-case ISO code before any region or script (`zh-CN` -> `zh`), aliases resolved."""
    code = language.lower().replace("_", "-").split("-")[0]
    return ALIASES.get(code, code)


def pretraining_group(language: str) -> str:
    """'seen' or 'unseen' in BLOOM's pretraining."""
    return "seen" if base_code(language) in BLOOM_LANGUAGES else "unseen"


def finetuning_group(language: str, finetuned: Collection[str]) -> str:
    """'finetuned' if `language` is among the languages a task was finetuned in, else 'held-out'."""
    return "finetuned" if base_code(language) in {base_code(code) for code in finetuned} else "held-out"
