"""The training run: transformers' `Trainer` on the CPU (schedule, accumulation, checkpoints, resume, logging,
progress bar), with a validation accuracy that equals greedy exact match.

Exact match without generating: a greedy decoder answers exactly the reference iff the argmax at every answer
position (the answer's tokens and its `</s>`) is the reference token, i.e. teacher-forced all-tokens-correct.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from .data import ConversationCollator, ConversationSet, QuestionSet, Recipe, validation_set
from .model import SHAPES_TEXT, SHAPES_VISION, build_untrained, save_checkpoint
from ..tiny import TextShape, VisionShape


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings; the defaults are the shipped recipe."""

    # One conversation per forward (no padding between 1,200- and 3,000-token items), 8 per optimiser step.
    batch_size: int = 1
    accumulation: int = 8
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    eval_steps: int = 250
    save_steps: int = 250
    validation_per_source: int = 100
    threads: int = 2
    bf16: bool = True  # CPU autocast; weights and optimiser state stay fp32
    max_steps: int = -1  # -1: one pass over the recipe's items


def exact_match_argmax(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """`(B, L)` predicted next tokens aligned with `labels` (position t holds the prediction for token t).
    `logits` is the model output's logits, or the tuple of its tensors, logits first."""
    predictions = (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)
    return torch.cat([predictions.new_full((predictions.shape[0], 1), -100), predictions[:, :-1]], dim=1)


def exact_match_metrics(prediction: EvalPrediction, kinds: list[str]) -> dict[str, float]:
    """Accuracy (all answer tokens right) overall and per question family."""
    predicted, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    answer = labels != -100
    correct = ((predicted == labels) | ~answer).all(axis=1)
    metrics = {"accuracy": float(correct.mean())}
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, right in zip(kinds, correct):
        by_kind[kind.split("/")[0]].append(bool(right))
    metrics.update({f"accuracy_{source}": float(np.mean(values)) for source, values in sorted(by_kind.items())})
    return metrics


class CheckpointTrainer(Trainer):
    """`Trainer` whose resume reloads the weights through `from_pretrained`: transformers 5.23 saves LLaVA-NeXT
    checkpoints with the hub's key names and its plain resume loads them non-strictly, silently keeping the
    fresh weights."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        saved = type(self.model).from_pretrained(resume_from_checkpoint, dtype=torch.float32)
        (model or self.model).load_state_dict(saved.state_dict())


def build_trainer(out: Path, recipe: Recipe, schedule: Schedule, text: TextShape = SHAPES_TEXT,
                  vision: VisionShape = SHAPES_VISION, progress: bool = True) -> Trainer:
    """A `Trainer` over the recipe's conversations, evaluated on single questions of held-out images."""
    torch.set_num_threads(schedule.threads)
    model, processor = build_untrained(recipe.seed, text, vision)
    validation: QuestionSet = validation_set(schedule.validation_per_source)
    arguments = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=schedule.batch_size,
        per_device_eval_batch_size=1,  # no padding between scenes of different sizes
        gradient_accumulation_steps=schedule.accumulation,
        learning_rate=schedule.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=schedule.warmup_ratio,
        weight_decay=schedule.weight_decay,
        max_grad_norm=1.0,
        num_train_epochs=1,
        max_steps=schedule.max_steps,
        bf16=schedule.bf16,
        use_cpu=True,
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=10,
        eval_strategy="steps",
        eval_steps=schedule.eval_steps,
        save_strategy="steps",
        save_steps=schedule.save_steps,
        save_total_limit=2,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=not progress,
        label_names=["labels"],
    )
    return CheckpointTrainer(
        model=model,
        args=arguments,
        train_dataset=ConversationSet(recipe),
        eval_dataset=validation,
        data_collator=ConversationCollator(processor, text.family),
        processing_class=processor,
        preprocess_logits_for_metrics=exact_match_argmax,
        compute_metrics=lambda prediction: exact_match_metrics(prediction, validation.kinds),
    )


def train(out: Path, recipe: Recipe, schedule: Schedule, *, resume: bool, **sizes) -> Trainer:
    """Train (resuming from the newest checkpoint in `out` when asked) and save the final model to `out/model`."""
    trainer = build_trainer(out, recipe, schedule, **sizes)
    has_checkpoint = any((out / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume and has_checkpoint else None)
    trainer.evaluate()
    model = trainer.model.eval()
    save_checkpoint(model, trainer.processing_class, out / "model")
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    return trainer
