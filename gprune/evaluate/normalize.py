"""Answer normalisation of the VQA evaluations: their shared tables and steps, and the processings built from them.

Written from reading the references (no code copied): `vqaEval.py` of the VQA evaluation (GT-Vision-Lab/VQA)
and EvalAI's answer processor as LLaVA's `m4c_evaluator.py` and lmms-eval's `vqa_eval_metric.py` hold it.
Both use the same contractions, number words, articles and punctuation marks (the tables below; theirs add
four mixed-case keys, which never match a lower-cased word, and two entries that map a word to itself) and
the same two steps, `strip_punctuation` then `map_words`. They differ in their punctuation rules (how a comma
between digits is found, how many periods go, what a digit is: PunctuationRules), in EvalAI's tokenising step
before the two, and in which texts each evaluation sends through them (metric.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
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


@dataclass(frozen=True)
class PunctuationRules:
    """How one evaluation finds a comma between digits and the periods to delete."""

    digit_comma: re.Pattern  # found anywhere in the text: every mark is deleted, none becomes a space
    period: re.Pattern  # a period that is not a decimal point ("3.5" keeps its point, "dog." loses it)
    periods: int  # how many such periods one pass deletes at most; 0: all


# Ours: every period goes.
OUR_RULES = PunctuationRules(re.compile(r"\d,\d"), re.compile(r"\.(?!\d)"), 0)
# Both references pass re.UNICODE (= 32) where the substitution takes its count: one pass deletes at most 32
# periods. vqaEval.py is Python 2 code, where \d matches 0-9 only; EvalAI's processor is Python 3 code, and it
# takes one or more commas between digits ("1,,000").
VQA_EVAL_RULES = PunctuationRules(re.compile(r"\d,\d", re.ASCII), re.compile(r"\.(?!\d)", re.ASCII), int(re.UNICODE))
EVALAI_RULES = PunctuationRules(re.compile(r"\d,+\d"), re.compile(r"\.(?!\d)"), int(re.UNICODE))


def clean_whitespace(text: str) -> str:
    """Newlines and tabs → spaces, then the ends stripped: the first step of every evaluation."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str, rules: PunctuationRules) -> str:
    """Each punctuation mark deleted if it stands next to a space somewhere in `text` (or if the text holds a
    comma between digits: "1,000" → "1000"), otherwise replaced by a space ("black-and-white" → "black and
    white"); then the periods that are no decimal points deleted (at most `rules.periods`)."""
    delete_marks = rules.digit_comma.search(text) is not None
    cleaned = text
    for mark in PUNCTUATION:
        if delete_marks or f"{mark} " in text or f" {mark}" in text:
            cleaned = cleaned.replace(mark, "")
        else:
            cleaned = cleaned.replace(mark, " ")
    return rules.period.sub("", cleaned, count=rules.periods)


def map_words(text: str) -> str:
    """Lower case, split on whitespace; number words → digits ("two" → "2", "none" → "0"), the articles a,
    an, the dropped, contractions restored ("dont" → "don't"); joined by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """Our normalisation (the `vqa` metric and answer agreement): vqaEval.py's steps, every period removed."""
    return map_words(strip_punctuation(clean_whitespace(text).lower(), OUR_RULES))


def vqa_eval_steps(text: str) -> str:
    """vqaEval.py's processPunctuation then processDigitArticle."""
    return map_words(strip_punctuation(text, VQA_EVAL_RULES))


def evalai_steps(text: str) -> str:
    """EvalAI's process_punctuation then process_digit_article."""
    return map_words(strip_punctuation(text, EVALAI_RULES))


def evalai_tokenize(text: str) -> str:
    """EvalAI's word_tokenize: lower case, every "," and "?" deleted, "'s" split off ("he's" → "he 's"), stripped."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def evalai_answer(text: str) -> str:
    """EvalAI's whole answer processor (what m4c_evaluator and lmms-eval call on an answer)."""
    return evalai_steps(clean_whitespace(evalai_tokenize(text)))
