"""`--metric` modes against the evaluations they reproduce.

Each reference is re-stated below step by step, as its code runs (our own transcription, the test oracle):
GT-Vision-Lab/VQA `vqaEval.py` at a013f00, LLaVA's `m4c_evaluator.py` (EvalAIAnswerProcessor and
TextVQAAccuracyEvaluator), and lmms-eval v0.3.0's TextVQA and VQAv2 `process_results` with its
`vqa_eval_metric.py`. Every mode must equal its oracle on a few hundred generated hard answers and on hand cases
whose scores come from reading the code; the modes must differ where the references do.
"""

from __future__ import annotations

import itertools
import random
import re
import statistics

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gprune.evaluate import METRICS, evalai_answer, normalize_answer, score
from gprune.evaluate.__main__ import build, parse_args
from gprune.evaluate.normalize import CONTRACTIONS, vqa_eval_steps
from vqa_helpers import run_evaluate

VQA_MODES = ("vqa", "vqa-official", "m4c", "lmms-vqav2")
# The references' contraction table is ours plus four mixed-case keys (never equal to a lower-cased word) and
# two entries that map a word to itself (checked against their source when this was written).
REFERENCE_CONTRACTIONS = {**CONTRACTIONS, "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
                          "let's": "let's", "she's": "she's"}
REFERENCE_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                     "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
REFERENCE_MARKS = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


# ------------------------------------------------------------------------------------------------ oracles


class VqaEvalOracle:
    """vqaEval.py (a013f00): processPunctuation, processDigitArticle and one question of evaluate().

    It is Python 2 code: its patterns, compiled without re.UNICODE, match \\d against 0-9 only (re.ASCII here).
    """

    def __init__(self):
        self.contractions = dict(REFERENCE_CONTRACTIONS)
        self.manual_map = dict(REFERENCE_NUMBERS)
        self.articles = ["a", "an", "the"]
        self.period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)  # "(?!<=" is a lookahead, not a lookbehind
        self.comma_strip = re.compile(r"(\d)(\,)(\d)", re.ASCII)
        self.punct = list(REFERENCE_MARKS)

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.punct:
            if (p + " " in in_text or " " + p in in_text) or (re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.period_strip.sub("", out_text, re.UNICODE)  # the flag lands in `count`: 32 periods at most

    def process_digit_article(self, in_text):
        out_text = []
        for word in in_text.lower().split():
            word = self.manual_map.setdefault(word, word)
            if word not in self.articles:
                out_text.append(word)
        for word_id, word in enumerate(out_text):
            if word in self.contractions:
                out_text[word_id] = self.contractions[word]
        return " ".join(out_text)

    def question_accuracy(self, prediction, answers):
        res_ans = prediction.replace("\n", " ").replace("\t", " ").strip()
        return records_accuracy(res_ans, answers, self.process_punctuation, self.process_digit_article)


def records_accuracy(res_ans, answers, process_punctuation, process_digit_article):
    """The scoring both vqaEval.py and lmms-eval's VQAv2 share: answer records whitespace-cleaned; only when the
    humans disagree, punctuation and digit/article steps on them and on `res_ans`; leave-one-out over records."""
    gts = [{"answer": answer.replace("\n", " ").replace("\t", " ").strip(), "answer_id": number}
           for number, answer in enumerate(answers, start=1)]
    if len({record["answer"] for record in gts}) > 1:
        for record in gts:
            record["answer"] = process_digit_article(process_punctuation(record["answer"]))
        res_ans = process_digit_article(process_punctuation(res_ans))
    accuracies = []
    for held_out in gts:
        matching = [record for record in gts if record != held_out and record["answer"] == res_ans]
        accuracies.append(min(1, float(len(matching)) / 3))
    return float(sum(accuracies)) / len(accuracies)


class EvalAIOracle:
    """EvalAIAnswerProcessor, as LLaVA's m4c_evaluator.py and lmms-eval's vqa_eval_metric.py hold it."""

    def __init__(self):
        self.contractions = dict(REFERENCE_CONTRACTIONS)
        self.number_map = dict(REFERENCE_NUMBERS)
        self.articles = ["a", "an", "the"]
        self.period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.comma_strip = re.compile(r"(?<=\d)(\,)+(?=\d)")
        self.punctuations = list(REFERENCE_MARKS)

    def word_tokenize(self, word):
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.punctuations:
            if (p + " " in in_text or " " + p in in_text) or (re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return self.period_strip.sub("", out_text, re.UNICODE)

    def process_digit_article(self, in_text):
        out_text = []
        for word in in_text.lower().split():
            word = self.number_map.setdefault(word, word)
            if word not in self.articles:
                out_text.append(word)
        for word_id, word in enumerate(out_text):
            if word in self.contractions:
                out_text[word_id] = self.contractions[word]
        return " ".join(out_text)

    def __call__(self, item):
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


def m4c_textvqa_oracle(prediction, raw_answers):
    """TextVQAAccuracyEvaluator: a score per unique processed answer, then the prediction's (0 if none)."""
    processor = EvalAIOracle()
    answers = [processor(answer) for answer in raw_answers]
    assert len(answers) == 10
    gt_answers = list(enumerate(answers))
    unique_answer_scores = {}
    for unique_answer in set(answers):
        accs = []
        for gt_answer in gt_answers:
            other_answers = [item for item in gt_answers if item != gt_answer]
            matching_answers = [item for item in other_answers if item[1] == unique_answer]
            accs.append(min(1, float(len(matching_answers)) / 3))
        unique_answer_scores[unique_answer] = sum(accs) / len(accs)
    return unique_answer_scores.get(processor(prediction), 0.0)


def lmms_textvqa_oracle(prediction, answers):
    """lmms-eval's textvqa_process_results: EvalAI on everything, leave-one-out by index."""
    processor = EvalAIOracle()
    res_ans = processor(prediction)
    answers = [processor(answer) for answer in answers]
    gt_acc = []
    for i in range(len(answers)):
        other_gt_ans = [answers[j] for j in range(len(answers)) if i != j]
        matching_ans = [item for item in other_gt_ans if item == res_ans]
        gt_acc.append(min(1, float(len(matching_ans)) / 3))
    return statistics.mean(gt_acc)


def lmms_vqav2_oracle(prediction, answers):
    """lmms-eval v0.3.0's vqav2_process_results (the records of lmms-lab/VQAv2 carry an answer_id each)."""
    processor = EvalAIOracle()
    return records_accuracy(processor(prediction), answers, processor.process_punctuation, processor.process_digit_article)


def oracle_scores(mode, prediction, answers) -> list[float]:
    """What each reference of `mode` gives (m4c: m4c_evaluator where it accepts the answers, and lmms-eval)."""
    if mode == "vqa-official":
        return [VqaEvalOracle().question_accuracy(prediction, answers)]
    if mode == "m4c":
        textvqa = [lmms_textvqa_oracle(prediction, answers)]
        return textvqa + [m4c_textvqa_oracle(prediction, answers)] if len(answers) == 10 else textvqa
    assert mode == "lmms-vqav2"
    return [lmms_vqav2_oracle(prediction, answers)]


# ------------------------------------------------------------------------------------------------ generated cases

# Surface forms of one answer each: case, periods, commas in numbers, number words, articles, contractions,
# "'s", punctuation next to spaces or inside words, whitespace, a curly apostrophe and a non-ASCII digit.
FAMILIES = [
    ["yes", "Yes", "YES", "yes.", "yes!", " yes ", "yes?", "\tyes\n", "the yes", "yes ,"],
    ["2", "two", "Two", "2.", "two!", "the two", "TWO.", "2 ", "2?", "none"],
    ["he's", "hes", "He's", "he s", "he 's", "he's.", "HES", "he’s", "he's?"],
    ["1000", "1,000", "1,,000", "1 000", "1000.", "1,000!", "1,000 ", "1.000", "10,00"],
    ["black and white", "black-and-white", "black - and - white", "Black And White", "black,white", "black, white",
     "black/white", "black and white.", "(black and white)"],
    ["man's hat", "mans hat", "man's hat.", "Man's Hat", "man 's hat", "the man's hat", "MAN'S HAT", "man's, hat"],
    ["don't", "dont", "do not", "Don't", "don't!", "don’t", "DONT", "dont?"],
    ["3.5", "3.5.", "3,5", "3.٣", "3٣", "three.five", "3 . 5", "3.50"],
    ["e.g.", "eg", "e.g", "E.G.", "e. g.", "e.g.,"],
    ["dog", "a dog", "the dog", "Dog.", "dogs", "dog?", "the Dog!", "dog's", "an dog", "A Dog"],
    ["." * 33 + "ok", "ok", "." * 65 + "ok", "." * 31 + "ok", "ok.", "ok" + "." * 40, "." * 32 + "ok"],
    ["what?", "what", "what ?", "What?!", "what??", "what?yes", "what,yes"],
    ["10", "ten", "TEN", "10.", "10,0", "1,0", "the ten", "10!"],
    ["somebody'd", "somebodyd", "somebody'd've", "somebodyd've", "Somebody'd", "somebody'd."],
    ["it's red", "its red", "it s red", "it's, red", "it's red?", "It'S Red", "its, red"],
    ["left", "left - right", "left-right", "left right", "(left)", "[left]", "left;", "left :"],
]


def generated_cases(count: int, seed: int) -> list[tuple[str, list[str]]]:
    """`count` (prediction, human answers): mostly ten humans who agree verbatim or mix forms of one answer."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        family = rng.choice(FAMILIES)
        size = rng.choice([10] * 6 + [1, 3, 5])
        if rng.random() < 0.3:
            answers = [rng.choice(family)] * size
        else:
            others = rng.choice(FAMILIES)
            answers = [rng.choice(family if rng.random() < 0.8 else others) for _ in range(size)]
        prediction = rng.choice(family) if rng.random() < 0.9 else rng.choice(rng.choice(FAMILIES))
        if rng.random() < 0.15:  # a two-part answer
            prediction = prediction + rng.choice([" ", ", ", "-", " / ", "'s "]) + rng.choice(rng.choice(FAMILIES))
        cases.append((prediction, answers))
    return cases


GENERATED = generated_cases(600, seed=19)


def test_every_mode_equals_its_reference_on_generated_hard_cases():
    for prediction, answers in GENERATED:
        for mode in ("vqa-official", "m4c", "lmms-vqav2"):
            ours = score(mode, prediction, answers)
            for expected in oracle_scores(mode, prediction, answers):
                assert ours == pytest.approx(expected, abs=1e-12), (mode, prediction, answers)


def test_the_generated_cases_separate_the_modes():
    """The cases exercise what the references disagree on: every two modes differ on at least 15 of them, and
    every mode gives partial and full credit."""
    scores = {mode: [score(mode, p, a) for p, a in GENERATED] for mode in VQA_MODES}
    for first, second in itertools.combinations(VQA_MODES, 2):
        differing = sum(abs(x - y) > 1e-9 for x, y in zip(scores[first], scores[second]))
        assert differing >= 15, (first, second, differing)
    for mode, values in scores.items():
        assert sum(0 < v < 1 for v in values) >= 50 and sum(v == 1 for v in values) >= 50, mode


# Arbitrary text over the characters the rules treat specially, and words of the tables.
TRICKY_TEXT = st.lists(st.one_of(st.sampled_from(list(" \t\n.,?!'’;:-/()[]{}\"\\_=+<>@`0123456789٣aAsS")),
                                 st.sampled_from(["'s", "'S", "two", "None", "the", "An", "dont", "hes", "he'dve",
                                                  "somebody'd", "y'allll", "1,000", "3.5", "..."])),
                       max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(TRICKY_TEXT)
def test_the_processors_equal_the_references_on_any_text(text):
    official, evalai = VqaEvalOracle(), EvalAIOracle()
    assert vqa_eval_steps(text) == official.process_digit_article(official.process_punctuation(text))
    assert evalai_answer(text) == evalai(text)


@settings(max_examples=200, deadline=None)
@given(TRICKY_TEXT, st.lists(st.sampled_from(["yes", "Yes", "2", "two", "he's", "hes", "1,000", "1000", "ok."]),
                             min_size=1, max_size=10))
def test_every_mode_equals_its_reference_on_any_text(prediction, answers):
    for mode in ("vqa-official", "m4c", "lmms-vqav2"):
        for expected in oracle_scores(mode, prediction, answers):
            assert score(mode, prediction, answers) == pytest.approx(expected, abs=1e-12), mode


# ------------------------------------------------------------------------------------------------ hand cases

# (prediction, human answers, expected score per mode: vqa, vqa-official, m4c, lmms-vqav2), from reading the code.
HAND_CASES = [
    # EvalAI's tokenising step splits "'s" off the prediction: "he 's"; the humans' "hes" becomes "he's" (m4c)
    # or, as ten agreeing humans, stays "hes" (vqaEval.py, lmms-eval VQAv2, which also leave "he's" as it is).
    ("he's", ["hes"] * 10, (1.0, 0.0, 0.0, 0.0)),
    # Disagreeing humans are normalised in vqaEval.py since a013f00 (2021): "two" → "2" for 3 of 10 humans,
    # 0.9 everywhere. (Its v2.0 of 2017, a4f1afd, stripped only their punctuation and gave 0.)
    ("2", ["two"] * 3 + ["other"] * 7, (0.9, 0.9, 0.9, 0.9)),
    # re.UNICODE passed as the count: one pass deletes 32 periods and ".yes" is left; lmms-eval's VQAv2 processes
    # the prediction twice when the humans disagree, so the 33rd period goes too. Ours deletes all.
    ("." * 33 + "yes", ["yes"] * 5 + ["no"] * 5, (1.0, 0.0, 0.0, 1.0)),
    ("." * 65 + "yes", ["yes"] * 5 + ["no"] * 5, (1.0, 0.0, 0.0, 0.0)),  # two passes leave one
    # Ten agreeing humans: vqaEval.py normalises nothing, so "Yes" ≠ "yes"; lmms-eval processes the prediction only.
    ("Yes", ["yes"] * 10, (1.0, 0.0, 1.0, 1.0)),
    ("yes", ["Yes"] * 10, (1.0, 0.0, 1.0, 0.0)),
    ("Two", ["2"] * 10, (1.0, 0.0, 1.0, 1.0)),
    ("1,000", ["1000"] * 10, (1.0, 0.0, 1.0, 1.0)),
    ("he's", ["he's"] * 10, (1.0, 1.0, 1.0, 0.0)),  # lmms-eval: "he 's" against the humans' untouched "he's"
    # EvalAI's tokeniser deletes the comma inside "red,blue" ("redblue"); the punctuation step makes it a space.
    ("red,blue", ["red blue"] * 4 + ["red"] * 6, (1.0, 1.0, 0.0, 0.0)),
    # lmms-eval's VQAv2 gives the humans no tokenising step: their "man's hat" ≠ the prediction's "man 's hat".
    ("man's hat", ["man's hat"] * 4 + ["hat"] * 6, (1.0, 1.0, 1.0, 0.0)),
    # "1,,000": vqaEval.py's comma rule wants one comma between digits, so both become spaces ("1 000"); EvalAI's
    # takes any run of commas and deletes them ("1000"), and its tokeniser deletes commas anyway.
    ("1000", ["1,,000"] * 4 + ["5"] * 6, (0.0, 0.0, 1.0, 1.0)),
    # vqaEval.py runs on Python 2, where \d is 0-9: the period before "٣" (an Arabic-Indic 3) is no decimal point.
    ("3.٣", ["3٣"] * 5 + ["no"] * 5, (0.0, 1.0, 0.0, 0.0)),
    # One human answer: the references find no other human to agree with; ours takes the exact match.
    ("dog", ["dog"], (1.0, 0.0, 0.0, 0.0)),
    # Articles and case go in every mode once the humans disagree: 2 of 10 humans, (2·1/3 + 8·2/3) / 10.
    ("The cat", ["cat", "a cat"] + ["dog"] * 8, (0.6, 0.6, 0.6, 0.6)),
]


@pytest.mark.parametrize("prediction, answers, expected", HAND_CASES)
def test_hand_cases_score_as_read_from_the_references(prediction, answers, expected):
    for mode, value in zip(VQA_MODES, expected):
        assert score(mode, prediction, answers) == pytest.approx(value), mode
        if mode != "vqa":
            assert all(oracle == pytest.approx(value) for oracle in oracle_scores(mode, prediction, answers)), mode


def test_the_modes_differ_wherever_the_references_do():
    """Every two modes (exact match included) have a hand case with different expected scores, and give them."""
    exact = [float(normalize_answer(p) in {normalize_answer(a) for a in answers}) for p, answers, _ in HAND_CASES]
    expected = {mode: [case[2][i] for case in HAND_CASES] for i, mode in enumerate(VQA_MODES)} | {"exact": exact}
    assert set(expected) == set(METRICS)
    for first, second in itertools.combinations(METRICS, 2):
        differing = [i for i, (x, y) in enumerate(zip(expected[first], expected[second])) if x != y]
        assert differing, (first, second)
        for i in differing:
            prediction, answers, _ = HAND_CASES[i]
            assert score(first, prediction, answers) != pytest.approx(score(second, prediction, answers))


def test_our_vqa_mode_is_the_symmetric_normalisation():
    """`vqa` compares normalize_answer of the prediction with normalize_answer of every human, always."""
    for prediction, answers in GENERATED:
        humans = [normalize_answer(a) for a in answers]
        matches = [h == normalize_answer(prediction) for h in humans]
        expected = float(matches[0]) if len(matches) == 1 else statistics.fmean(
            min((sum(matches) - own) / 3, 1) for own in matches)
        assert score("vqa", prediction, answers) == pytest.approx(expected)


def test_every_mode_refuses_no_answers_and_an_unknown_metric():
    for mode in METRICS:
        with pytest.raises(ValueError, match="at least one"):
            score(mode, "yes", [])
    with pytest.raises(ValueError, match="metric must be one of vqa, vqa-official, m4c, lmms-vqav2, exact"):
        score("vqa-2017", "yes", ["yes"])


# ------------------------------------------------------------------------------------------------ wiring


@pytest.mark.parametrize("metric", METRICS)
def test_the_command_records_each_metric_in_its_settings(metric, tmp_path):
    settings, _ = build(parse_args(["--model", "tiny", "--dataset", str(tmp_path), "--out", str(tmp_path / "x"),
                                    "--metric", metric]), "")
    assert settings.metric == metric and settings.to_json("fingerprint")["metric"] == metric


def test_a_run_scores_its_rows_with_its_metric_and_names_it(vqa_dataset, tmp_path):
    out = tmp_path / "m4c"
    done = run_evaluate(vqa_dataset, out, "--metric", "m4c", "--limit", "3", "--methods", "gprune", "--keep-ratios", "0.5")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in pq.read_table(out / "results.parquet").to_pylist() if r["error"] is None]
    assert len(rows) == 2 * 3
    for row in rows:
        assert row["accuracy"] == pytest.approx(score("m4c", row["answer"], row["answers"]))
    assert "VQA accuracy as LLaVA's m4c_evaluator (lmms-eval TextVQA)" in done.stdout.splitlines()[0]


def test_the_failures_tab_names_the_metric():
    import app_failures  # gradio: imported by this test only

    assert app_failures.metric_description("m4c") == r"m4c \(VQA accuracy as LLaVA's m4c\_evaluator \(lmms\-eval TextVQA\)\)"
    assert app_failures.metric_description("[x](y)") == r"\[x\]\(y\)"  # a metric of another version, escaped
