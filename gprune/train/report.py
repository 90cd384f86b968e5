"""The training report: loss and validation-accuracy curves (PNG) and a short Markdown/JSON summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves(log_history: list[dict]) -> dict[str, list]:
    """Training loss per logged step, and each validation accuracy per evaluated step."""
    train = [(row["step"], row["loss"]) for row in log_history if "loss" in row]
    evaluated = [row for row in log_history if "eval_accuracy" in row]
    accuracy_keys = sorted({key for row in evaluated for key in row if key.startswith("eval_accuracy")})
    return {
        "train_steps": [step for step, _ in train], "train_loss": [loss for _, loss in train],
        "eval_steps": [row["step"] for row in evaluated],
        **{key.removeprefix("eval_"): [row.get(key) for row in evaluated] for key in accuracy_keys},
    }


def write_report(out: Path, log_history: list[dict], recipe, schedule, seconds: float) -> None:
    data = curves(log_history)
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    loss_axis.plot(data["train_steps"], data["train_loss"], lw=1)
    loss_axis.set(title="training loss (answer tokens)", xlabel="optimiser step", yscale="log")
    for key in (k for k in data if k.startswith("accuracy")):
        label = {"accuracy": "all", "accuracy_easy-vqa": "easy-VQA", "accuracy_scenes": "scenes"}.get(key, key)
        accuracy_axis.plot(data["eval_steps"], [100 * v for v in data[key]], marker="o", label=label)
    accuracy_axis.set(title="validation exact match (held-out images)", xlabel="optimiser step", ylabel="%", ylim=(0, 100))
    accuracy_axis.legend()
    figure.savefig(out / "curves.png", dpi=110)
    plt.close(figure)
    summary = {
        "recipe": dataclasses.asdict(recipe), "schedule": dataclasses.asdict(schedule),
        "wall_seconds_this_invocation": round(seconds, 1),
        "final": {key: values[-1] for key, values in data.items() if key.startswith("accuracy") and values},
        "curves": data,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    final = ", ".join(f"{k} {100 * v:.1f} %" for k, v in summary["final"].items())
    (out / "report.md").write_text(
        "# Training report: the `shapes` LLaVA-NeXT\n\n"
        f"- recipe: {summary['recipe']}\n- schedule: {summary['schedule']}\n"
        f"- wall time of this invocation: {seconds / 60:.1f} min\n"
        f"- final validation exact match (held-out images, single questions): {final}\n\n"
        "![loss and accuracy](curves.png)\n", encoding="utf-8")
