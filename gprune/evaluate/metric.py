"""The metrics of a run (`--metric`): VQA accuracy as ours or as one reference evaluation computes it, exact match.

VQA accuracy of a prediction against n human answers: for each human i, min(#other humans who gave the
prediction / 3, 1), averaged over the humans (the leave-one-out subsets). The evaluations differ in which
answers they normalise and how (normalize.py); written from reading each reference, no code copied:

- `vqa` (default): ours, symmetric. The prediction and every human answer get vqaEval.py's normalisation,
  always (every period removed); one human answer: exact match.
- `vqa-official`: GT-Vision-Lab/VQA `vqaEval.py` as of its last change (a013f00, 2021). Newlines, tabs and
  the ends are cleaned; only when the humans disagree are their answers and the prediction normalised, so
  with ten agreeing humans "Yes" does not match "yes".
- `m4c`: LLaVA's `m4c_evaluator.py` (EvalAIAnswerProcessor + TextVQAAccuracyEvaluator), which lmms-eval's
  TextVQA task computes too: EvalAI's processor on the prediction and on every human answer.
- `lmms-vqav2`: lmms-eval's VQAv2 task (`tasks/vqav2/utils.py`) from v0.1.0 to v0.3.4 (changed in July
  2025): EvalAI's processor on the prediction; only when the humans disagree are their answers normalised
  (without EvalAI's tokenising step) and the processed prediction normalised a second time.
- `exact`: 1 if the normalised prediction equals any normalised answer (GQA, POPE).

The references count the other humans by position (each VQA answer record has its own answer_id), so one
human answer scores 0 there.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .normalize import clean_whitespace, evalai_answer, evalai_steps, normalize_answer, vqa_eval_steps

HUMANS_FOR_FULL_CREDIT = 3


def _check_answers(answers: Sequence[str]) -> None:
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")


def leave_one_out(predicted: str, humans: Sequence[str]) -> float:
    """Mean over the humans i of min(#{j ≠ i: humans[j] == predicted} / 3, 1), for texts compared as they are."""
    matches = [human == predicted for human in humans]
    total = sum(matches)
    return sum(min((total - own) / HUMANS_FOR_FULL_CREDIT, 1.0) for own in matches) / len(matches)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Ours: VQA accuracy with `normalize_answer` applied to the prediction and to every human answer.

    One human answer has no leave-one-out subset: then it is the exact match.
    """
    _check_answers(answers)
    predicted = normalize_answer(prediction)
    humans = [normalize_answer(answer) for answer in answers]
    if len(humans) == 1:
        return float(humans[0] == predicted)
    return leave_one_out(predicted, humans)


def vqa_official_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """As vqaEval.py: whitespace cleaned; when the humans disagree, their answers and the prediction normalised."""
    _check_answers(answers)
    return _steps_when_humans_disagree(clean_whitespace(prediction), answers, vqa_eval_steps)


def m4c_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """As m4c_evaluator's TextVQAAccuracyEvaluator and lmms-eval's TextVQA: EvalAI's processor on every text.

    m4c_evaluator asserts ten human answers; lmms-eval's TextVQA computes the same for any number, as here.
    """
    _check_answers(answers)
    return leave_one_out(evalai_answer(prediction), [evalai_answer(answer) for answer in answers])


def lmms_vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """As lmms-eval's VQAv2 (v0.1.0–v0.3.4): EvalAI's processor on the prediction; when the humans disagree,
    EvalAI's punctuation and word steps on their answers and once more on the processed prediction."""
    _check_answers(answers)
    return _steps_when_humans_disagree(evalai_answer(prediction), answers, evalai_steps)


def _steps_when_humans_disagree(predicted: str, answers: Sequence[str], steps) -> float:
    """Leave-one-out accuracy of `predicted` against the whitespace-cleaned `answers`; `steps` is applied to the
    answers and to `predicted` only when the humans disagree (both references skip it when all agree)."""
    humans = [clean_whitespace(answer) for answer in answers]
    if len(set(humans)) > 1:
        humans = [steps(human) for human in humans]
        predicted = steps(predicted)
    return leave_one_out(predicted, humans)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer (GQA, POPE), else 0.0."""
    if not answers:
        raise ValueError("exact match needs at least one reference answer")
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(answer) == predicted for answer in answers))


SCORERS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "vqa": vqa_accuracy, "vqa-official": vqa_official_accuracy, "m4c": m4c_accuracy,
    "lmms-vqav2": lmms_vqav2_accuracy, "exact": exact_match,
}
METRICS = tuple(SCORERS)
METRIC_LABELS = {
    "vqa": "VQA accuracy (symmetric normalisation)", "vqa-official": "VQA accuracy as vqaEval.py",
    "m4c": "VQA accuracy as LLaVA's m4c_evaluator (lmms-eval TextVQA)", "lmms-vqav2": "VQA accuracy as lmms-eval VQAv2",
    "exact": "exact match",
}


def score(metric: str, prediction: str, answers: Sequence[str]) -> float:
    """`metric` (one of METRICS) of `prediction` against `answers`."""
    if metric not in SCORERS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return SCORERS[metric](prediction, answers)


def same_answer(first: str, second: str) -> bool:
    """Whether two model answers agree after our normalisation ("Two dogs." = "2 dogs"), whatever the metric."""
    return normalize_answer(first) == normalize_answer(second)
