"""VQA accuracy: the official answer normalisation and min(#matching humans / 3, 1) over leave-one-out subsets.

Written from the definition of the VQA evaluation (Antol et al. 2015; VQA v2 `vqaEval.py` normalisation
rules), applied to the prediction and to every human answer alike, as the TextVQA and VQAv2 evaluations of
LLaVA-style papers do (the original script skips normalisation when all human answers agree verbatim; then
"Two" would not match "2").
"""

from __future__ import annotations

import re
from typing import Sequence

METRICS = ("vqa", "exact")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# The official table (its mixed-case keys can never match lower-cased words and no-op entries are left out).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")  # "3.5" keeps its point, "dog." and "e.g." lose theirs
HUMANS_FOR_FULL_CREDIT = 3


def normalize_answer(text: str) -> str:
    """The VQA normalisation: lower case, punctuation, number words → digits, no articles, contractions.

    A punctuation mark next to a space (or any mark in a text holding a digit,digit group such as "1,000")
    is deleted, otherwise replaced by a space ("black-and-white" → "black and white"). Periods go unless a
    digit follows. "two" → "2", "none" → "0"; "a", "an", "the" are dropped; "dont" → "don't".
    """
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    delete_marks = DIGIT_COMMA_DIGIT.search(text) is not None
    cleaned = text
    for mark in PUNCTUATION:
        if delete_marks or f"{mark} " in text or f" {mark}" in text:
            cleaned = cleaned.replace(mark, "")
        else:
            cleaned = cleaned.replace(mark, " ")
    cleaned = PERIOD_NOT_BEFORE_DIGIT.sub("", cleaned)
    words = [NUMBER_WORDS.get(word, word) for word in cleaned.split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Standard VQA accuracy of `prediction` against the human `answers` (10 in VQAv2 and TextVQA).

    For each human i: min(#other humans who gave the prediction / 3, 1); the mean over the humans (the
    leave-one-out subsets). One human answer has no leave-one-out subset: then it is the exact match.
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in answers]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    return sum(min((total - own) / HUMANS_FOR_FULL_CREDIT, 1.0) for own in matches) / len(matches)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer (GQA, POPE), else 0.0."""
    if not answers:
        raise ValueError("exact match needs at least one reference answer")
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))


def score(metric: str, prediction: str, answers: Sequence[str]) -> float:
    """`metric` ("vqa" or "exact") of `prediction` against `answers`."""
    if metric == "vqa":
        return vqa_accuracy(prediction, answers)
    if metric == "exact":
        return exact_match(prediction, answers)
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def same_answer(first: str, second: str) -> bool:
    """Whether two model answers agree after the VQA normalisation ("Two dogs." = "2 dogs")."""
    return normalize_answer(first) == normalize_answer(second)
