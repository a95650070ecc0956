"""A synthetic xP3-style multilingual corpus for the demo, the tests and the benchmarks.

Rows are `{"inputs": prompt, "targets": answer, "task": ..., "language": ...}` from four tasks
rendered in nine languages and six scripts: copy (repeat a list of words), compare (the larger of
two numbers), sentiment classification with label words, and word translation through a built-in
dictionary. Each is something a tiny model trained from random init learns within the demo's
CPU minutes. The copy prompt names its words first and ends with the same colon that introduced
them, so the answer starts where an induction head looks. `CROSSLINGUAL` holds a task out of some
languages: its training rows never use those languages, its multiple-choice examples do (the
demo's crosslingual row; what carries over is the digits, not any language knowledge). Every task
also comes as multiple-choice examples (the true answer among distractors) for zero-shot
evaluation, and `xp3_like_pair_lengths` gives xP3-like pair lengths for packing experiments.
Everything is deterministic in the seed, so no data is ever downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# One concept list, rendered per language: the built-in dictionary of the translation task.
CONCEPTS = ("cat", "dog", "bird", "fish", "horse", "tree", "river", "sun", "moon", "house",
            "red", "blue", "green", "big", "small", "water", "bread", "book", "city", "friend")
LEXICON = {
    "en": "cat dog bird fish horse tree river sun moon house red blue green big small water bread book city friend",
    "fr": "chat chien oiseau poisson cheval arbre rivière soleil lune maison rouge bleu vert grand petit eau pain livre ville ami",
    "es": "gato perro pájaro pez caballo árbol río sol luna casa rojo azul verde grande pequeño agua pan libro ciudad amigo",
    "de": "Katze Hund Vogel Fisch Pferd Baum Fluss Sonne Mond Haus rot blau grün groß klein Wasser Brot Buch Stadt Freund",
    "ru": "кошка собака птица рыба лошадь дерево река солнце луна дом красный синий зелёный большой маленький вода хлеб книга город друг",
    "el": "γάτα σκύλος πουλί ψάρι άλογο δέντρο ποτάμι ήλιος φεγγάρι σπίτι κόκκινο μπλε πράσινο μεγάλος μικρός νερό ψωμί βιβλίο πόλη φίλος",
    "ar": "قطة كلب طائر سمكة حصان شجرة نهر شمس قمر بيت أحمر أزرق أخضر كبير صغير ماء خبز كتاب مدينة صديق",
    "hi": "बिल्ली कुत्ता पक्षी मछली घोड़ा पेड़ नदी सूरज चाँद घर लाल नीला हरा बड़ा छोटा पानी रोटी किताब शहर दोस्त",
    "zh": "猫 狗 鸟 鱼 马 树 河 太阳 月亮 房子 红 蓝 绿 大 小 水 面包 书 城市 朋友",
}
LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "es": "Spanish", "de": "German", "ru": "Russian",
    "el": "Greek", "ar": "Arabic", "hi": "Hindi", "zh": "Chinese",
}
# Prompts per task and language; {x} is the task's payload, {a} {b} numbers, {src} {dst} languages.
PROMPTS = {
    "copy": {
        "en": "Words: {x}\nRepeat these words exactly:", "fr": "Mots : {x}\nRépétez exactement ces mots :",
        "es": "Palabras: {x}\nRepite exactamente estas palabras:", "de": "Wörter: {x}\nWiederhole genau diese Wörter:",
        "ru": "Слова: {x}\nПовторите в точности эти слова:", "el": "Λέξεις: {x}\nΕπανάλαβε ακριβώς αυτές τις λέξεις:",
        "ar": "الكلمات: {x}\nكرر هذه الكلمات بالضبط:", "hi": "शब्द: {x}\nइन शब्दों को ठीक से दोहराएँ:",
        "zh": "词语：{x}\n请准确重复这些词语：",
    },
    "compare": {
        "en": "Which number is larger, {a} or {b}?", "fr": "Quel nombre est le plus grand, {a} ou {b} ?",
        "es": "¿Qué número es mayor, {a} o {b}?", "de": "Welche Zahl ist größer, {a} oder {b}?",
        "ru": "Какое число больше, {a} или {b}?", "el": "Ποιος αριθμός είναι μεγαλύτερος, {a} ή {b};",
        "ar": "أي عدد أكبر، {a} أم {b}؟", "hi": "कौन सी संख्या बड़ी है, {a} या {b}?", "zh": "{a}和{b}哪个数更大？",
    },
    "sentiment": {
        "en": "Review: {x}\nIs this review positive or negative?",
        "fr": "Avis : {x}\nCet avis est-il positif ou négatif ?",
        "es": "Reseña: {x}\n¿Esta reseña es positiva o negativa?",
        "de": "Bewertung: {x}\nIst diese Bewertung positiv oder negativ?",
        "ru": "Отзыв: {x}\nЭтот отзыв положительный или отрицательный?",
        "el": "Κριτική: {x}\nΕίναι αυτή η κριτική θετική ή αρνητική;",
        "ar": "المراجعة: {x}\nهل هذه المراجعة إيجابية أم سلبية؟",
        "hi": "समीक्षा: {x}\nक्या यह समीक्षा सकारात्मक है या नकारात्मक?",
        "zh": "评论：{x}\n这条评论是正面的还是负面的？",
    },
    "translate": {
        "en": "Translate from {src} to {dst}: {x}", "fr": "Traduisez du {src} vers le {dst} : {x}",
        "es": "Traduce del {src} al {dst}: {x}", "de": "Übersetze von {src} nach {dst}: {x}",
        "ru": "Переведите с языка {src} на язык {dst}: {x}", "el": "Μετάφρασε από {src} σε {dst}: {x}",
        "ar": "ترجم من {src} إلى {dst}: {x}", "hi": "{src} से {dst} में अनुवाद करें: {x}",
        "zh": "从{src}翻译成{dst}：{x}",
    },
}
SENTIMENT = {  # (positive words, negative words, positive label, negative label)
    "en": ("wonderful great lovely excellent", "terrible awful boring bad", "positive", "negative"),
    "fr": ("merveilleux génial charmant excellent", "terrible affreux ennuyeux mauvais", "positif", "négatif"),
    "es": ("maravilloso genial encantador excelente", "terrible horrible aburrido malo", "positiva", "negativa"),
    "de": ("wunderbar toll schön ausgezeichnet", "schrecklich furchtbar langweilig schlecht", "positiv", "negativ"),
    "ru": ("чудесный отличный прекрасный великолепный", "ужасный кошмарный скучный плохой", "положительный", "отрицательный"),
    "el": ("υπέροχο τέλειο όμορφο εξαιρετικό", "απαίσιο φρικτό βαρετό κακό", "θετική", "αρνητική"),
    "ar": ("رائع ممتاز جميل مدهش", "فظيع سيئ ممل رديء", "إيجابية", "سلبية"),
    "hi": ("शानदार बढ़िया सुंदर उत्तम", "भयानक खराब उबाऊ बुरा", "सकारात्मक", "नकारात्मक"),
    "zh": ("精彩 很棒 可爱 优秀", "糟糕 可怕 无聊 差劲", "正面", "负面"),
}
LANGUAGES = tuple(LEXICON)
TASKS = tuple(PROMPTS)
# Tasks held out of some languages in training (rows of the task never use them), evaluated there.
CROSSLINGUAL = {"compare": ("de", "el", "ar", "hi")}
_WORDS = {lang: words.split() for lang, words in LEXICON.items()}
_SEPARATOR = {"zh": "，"}


def _join(lang: str, words: list[str]) -> str:
    return _SEPARATOR.get(lang, " ").join(words)


def _word_count(rng: random.Random, median: float) -> int:
    """Log-normal payload lengths with a tail (up to three times the median)."""
    return max(1, min(int(rng.lognormvariate(0.0, 0.6) * median), 3 * int(median) + 1))


def _language_for(rng: random.Random, task: str) -> str:
    """A language the task's training rows use (all but its `CROSSLINGUAL` ones)."""
    held_out = CROSSLINGUAL.get(task, ())
    return rng.choice([lang for lang in LANGUAGES if lang not in held_out])


def make_row(rng: random.Random, median_words: float = 2.0, task: str | None = None,
             lang: str | None = None) -> dict[str, str]:
    """One random (inputs, targets) pair: of `task` in `lang` when given, else a random task in a
    language its training rows use."""
    task = task or rng.choice(TASKS)
    lang = lang or _language_for(rng, task)
    prompt = PROMPTS[task][lang]
    words = _WORDS[lang]
    if task == "copy":
        payload = _join(lang, [rng.choice(words) for _ in range(_word_count(rng, median_words))])
        return _row(prompt.format(x=payload), payload, task, lang)
    if task == "compare":
        a, b = rng.sample(range(100), 2)
        return _row(prompt.format(a=a, b=b), str(max(a, b)), task, lang)
    if task == "sentiment":
        positive, negative, yes, no = SENTIMENT[lang]
        is_positive = rng.random() < 0.5
        tone = (positive if is_positive else negative).split()
        review = [rng.choice(words) for _ in range(_word_count(rng, 2 * median_words))]
        review.insert(rng.randrange(len(review) + 1), rng.choice(tone))
        return _row(prompt.format(x=_join(lang, review)), yes if is_positive else no, task, lang)
    src = rng.choice([other for other in LANGUAGES if other != lang])
    concept = rng.randrange(len(CONCEPTS))
    text = prompt.format(src=LANGUAGE_NAMES[src], dst=LANGUAGE_NAMES[lang], x=_WORDS[src][concept])
    return _row(text, _WORDS[lang][concept], task, lang)


# The multiple-choice versions of the tasks (zero-shot evaluation of the demo): the true answer
# among distractors, under two prompts: the task's own, and the same followed by "Answer:".
CHOICE_PROMPTS = {"as_trained": "{}", "answer_cue": "{}\nAnswer:"}


def _distractors(rng: random.Random, row: dict[str, str], count: int) -> list[str]:
    """Wrong answers, distinct from the true one and from each other: the other label word or
    number, or `count` answers with one word replaced."""
    lang, answer = row["language"], row["targets"]
    if row["task"] == "sentiment":
        *_, yes, no = SENTIMENT[lang]
        return [no if answer == yes else yes]
    if row["task"] == "compare":  # the other number of the prompt
        return [number for number in re.findall(r"\d+", row["inputs"]) if number != answer]
    wrong: list[str] = []
    while len(wrong) < count:  # copy and translate: one word replaced
        words = answer.split(_SEPARATOR.get(lang, " "))
        words[rng.randrange(len(words))] = rng.choice(_WORDS[lang])
        candidate = _join(lang, words)
        if candidate != answer and candidate not in wrong:
            wrong.append(candidate)
    return wrong


def generate_choice_examples(per_task_and_language: int, seed: int = 0,
                             held_out_from: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Multiple-choice examples (the format `tools/evaluate.py` reads) of every task in every
    language (its `CROSSLINGUAL` ones included), each under both prompts; datasets are named
    `demo_<task>`. An input found in `held_out_from` (the training inputs) is drawn again, so the
    examples are held out."""
    rng = random.Random(seed)
    for task in TASKS:
        for lang in LANGUAGES:
            for i in range(per_task_and_language):
                row = make_row(rng, 2.0, task, lang)
                while row["inputs"] in held_out_from:
                    row = make_row(rng, 2.0, task, lang)
                choices = [row["targets"], *_distractors(rng, row, 2)]
                rng.shuffle(choices)
                for prompt, template in CHOICE_PROMPTS.items():
                    yield {"id": f"demo_{task}/{lang}/{i}/{prompt}", "dataset": f"demo_{task}", "language": lang,
                           "prompt": prompt, "inputs": template.format(row["inputs"]), "choices": choices,
                           "label": choices.index(row["targets"])}


def _row(inputs: str, targets: str, task: str, language: str) -> dict[str, str]:
    return {"inputs": inputs, "targets": targets, "task": task, "language": language}


def generate_rows(num_rows: int, seed: int = 0, median_words: float = 2.0) -> Iterator[dict]:
    rng = random.Random(seed)
    for _ in range(num_rows):
        yield make_row(rng, median_words)


def write_jsonl(path: str | Path, num_rows: int, seed: int = 0, median_words: float = 2.0) -> Path:
    """Write `num_rows` rows to `path` (gzip-compressed if it ends in .gz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as out:
            for row in generate_rows(num_rows, seed, median_words):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def xp3_like_pair_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) token counts shaped like xP3's: log-normal inputs (median 100 tokens,
    sigma 1: a long tail), targets mostly 1-20 tokens (10% longer, up to 200)."""
    rng = np.random.default_rng(seed)
    inputs = np.clip(rng.lognormal(np.log(100), 1.0, n), 1, None).astype(np.int32)
    short = rng.random(n) < 0.9
    targets = np.where(short, rng.integers(1, 21, n), rng.integers(21, 200, n)).astype(np.int32)
    return inputs, targets
