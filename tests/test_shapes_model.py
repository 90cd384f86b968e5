"""The `shapes` model and its training code: the shipped checkpoint loads and answers, the generated scenes are
deterministic, the built-in test sets read through the evaluator, and training resumes exactly."""

from __future__ import annotations

import torch

from gprune import load_model
from gprune.evaluate.data import DatasetSpec, open_split, resolve_source
from gprune.train import benchmarks, scenes
from gprune.prompts import chat_prompt
from gprune.train.data import ConversationCollator, ConversationSet, QuestionSet, easy_vqa_items
from gprune.train.loop import Schedule, build_trainer
from gprune.train.model import build_untrained
from gprune.train.data import Recipe
from gprune.tiny import TINY_TEXT, TINY_VISION


def test_scenes_are_a_pure_function_of_their_seed_and_ask_answerable_questions():
    first, again = scenes.scene(1_000_003), scenes.scene(1_000_003)
    assert first.image.tobytes() == again.image.tobytes() and first.questions == again.questions
    count = dict(first.questions)["how many shapes are there?"]
    assert count == str(len(first.shapes)) and scenes.MIN_OBJECTS <= len(first.shapes) <= scenes.MAX_OBJECTS
    assert set(scenes.TRAIN_SEEDS).isdisjoint(range(scenes.TEST_SEEDS.start, scenes.TEST_SEEDS.stop))
    assert scenes.looks_like_flat_shapes(first.image)


def test_the_shipped_shapes_checkpoint_answers_a_fixed_sample_of_easy_vqa_test_questions():
    """100 easy-VQA test questions (a seeded sample of the 9,673), greedy answers as the app gives them."""
    loaded = load_model("shapes", device="cpu")
    assert loaded.name == "shapes" and not loaded.random_weights
    questions = QuestionSet(easy_vqa_items("test"), limit=100, seed=0)
    right = 0
    for index in range(len(questions)):
        item = questions[index]
        (question, answer), = item["turns"]
        inputs = loaded.processor(images=item["image"], text=loaded.prompt(question), return_tensors="pt")
        with torch.no_grad():
            output = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
        reply = loaded.processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        right += reply.strip() == answer
    # Measured: 82 of 100 (the issue asks for >= 90: not reached yet, see the model card); a regression below 75 fails.
    assert right >= 75, right


def test_built_in_test_sets_open_through_the_evaluator(tmp_path, monkeypatch):
    monkeypatch.setenv("GPRUNE_CACHE", str(tmp_path))
    source = resolve_source(benchmarks.SCENES)
    opened = open_split(DatasetSpec(source, "test"))
    first = next(iter(opened.rows))
    expected = benchmarks.rows(benchmarks.SCENES)[0]
    assert first["question"] == expected["question"] and first["answers"] == expected["answers"]
    assert resolve_source(benchmarks.SCENES) == source  # written once, then reused


def test_a_run_interrupted_and_resumed_from_its_checkpoint_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    from transformers import TrainerCallback

    class StopAfterTwoSteps(TrainerCallback):  # as a kill right after the step-2 checkpoint: same schedule
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    recipe = Recipe(easy_vqa_epochs=0, scene_count=6, seed=3)
    schedule = Schedule(accumulation=1, eval_steps=100, save_steps=2, validation_per_source=2, threads=1, max_steps=4)
    sizes = {"text": TINY_TEXT.__class__(**{**TINY_TEXT.__dict__, "family": "mistral"}), "vision": TINY_VISION}
    uninterrupted = build_trainer(tmp_path / "whole", recipe, schedule, progress=False, **sizes)
    uninterrupted.train()
    interrupted = build_trainer(tmp_path / "run", recipe, schedule, progress=False, **sizes)
    interrupted.add_callback(StopAfterTwoSteps())
    interrupted.train()
    assert interrupted.state.global_step == 2
    at_checkpoint = {name: value.clone() for name, value in interrupted.model.state_dict().items()}
    resumed = build_trainer(tmp_path / "run", recipe, schedule, progress=False, **sizes)
    resumed._load_from_checkpoint(str(tmp_path / "run" / "checkpoints" / "checkpoint-2"))
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, at_checkpoint[name]), name  # the checkpoint's weights, not fresh ones
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name  # bit-exact: data order, RNG, schedule, optimiser state



def test_a_packed_item_trains_each_answer_exactly_as_its_single_question_prompt():
    """The shared-prefix pack gives every answer the logits of a lone question about the image, so no answer can
    be read off another question (the multi-turn shortcut), and padding a shorter item changes nothing."""
    sizes = {"text": TINY_TEXT.__class__(**{**TINY_TEXT.__dict__, "family": "mistral"}), "vision": TINY_VISION}
    model, processor = build_untrained(0, **sizes)
    model.eval()
    collator = ConversationCollator(processor, "mistral")
    item = ConversationSet(Recipe())[0]
    other = ConversationSet(Recipe(easy_vqa_epochs=0, scene_count=1))[0]  # a scene: more visual tokens
    assert len(item["turns"]) >= 3

    def answer_logits(batch: dict, row: int = 0) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[row]
        answers = (batch["labels"][row] != -100).nonzero().flatten()
        return logits[answers - 1]

    singles = []
    for question, answer in item["turns"]:
        prompt = chat_prompt(processor, "mistral", question)
        plain = processor(images=item["image"], text=prompt, return_tensors="pt")
        reply = processor.tokenizer(f" {answer}</s>", add_special_tokens=False, return_tensors="pt")["input_ids"]
        input_ids = torch.cat([plain["input_ids"], reply], dim=1)
        with torch.no_grad():  # the stock 2-D causal forward of prompt + answer
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           pixel_values=plain["pixel_values"], image_sizes=plain["image_sizes"]).logits[0]
        singles.append(logits[plain["input_ids"].shape[1] - 1: -1])
    packed = answer_logits(collator([item]))
    torch.testing.assert_close(packed, torch.cat(singles), atol=1e-5, rtol=1e-4)
    batched = collator([other, item])  # `item` is the shorter row: right-padded
    assert batched["input_ids"].shape[1] > collator([item])["input_ids"].shape[1]
    torch.testing.assert_close(answer_logits(batched, row=1), packed, atol=1e-5, rtol=1e-4)


def test_the_blank_twins_keep_every_question_and_replace_each_image_by_its_plain_background():
    import io

    from PIL import Image

    records = []
    for seed in (scenes.TEST_SEEDS.start, scenes.TEST_SEEDS.start + 1):
        generated = scenes.scene(seed)
        buffer = io.BytesIO()
        generated.image.save(buffer, format="PNG")
        records += [{"image": buffer.getvalue(), "question": q, "answers": [a]} for q, a in generated.questions]
    blanked = benchmarks._blanked(records)
    assert [(r["question"], r["answers"]) for r in blanked] == [(r["question"], r["answers"]) for r in records]
    for original, blank in zip(records, blanked):
        before, after = Image.open(io.BytesIO(original["image"])), Image.open(io.BytesIO(blank["image"])).convert("RGB")
        assert after.size == before.size and len(after.getcolors()) == 1
        assert after.getpixel((0, 0)) == before.convert("RGB").getpixel((0, 0))
    assert len(Image.open(io.BytesIO(records[0]["image"])).convert("RGB").getcolors(1 << 24)) > 1
    assert "easy-vqa-blank" in benchmarks.BENCHMARKS and "shapes-scenes-blank" in benchmarks.BENCHMARKS


def test_at_keep_ratio_one_every_method_gives_the_shapes_model_exactly_its_unpruned_answers():
    from gprune import METHODS, patch, unpatch

    loaded = load_model("shapes", device="cpu")
    tokenizer = loaded.processor.tokenizer
    easy = QuestionSet(easy_vqa_items("test")[:2])
    generated = scenes.scene(scenes.TEST_SEEDS.start)
    items = [easy[0], easy[1], {"image": generated.image, "turns": [generated.questions[0]]}]
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = loaded.processor(images=[item["image"] for item in items], padding=True, return_tensors="pt",
                                  text=[loaded.prompt(item["turns"][0][0]) for item in items])
    finally:
        tokenizer.padding_side = previous
    settings = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        stock = loaded.model.generate(**inputs, **settings)
    for method in METHODS:
        patch(loaded.model, method=method, keep_ratio=1.0)
        try:
            with torch.no_grad():
                ours = loaded.model.generate(**inputs, **settings)
        finally:
            unpatch(loaded.model)
        assert torch.equal(ours.sequences, stock.sequences), method
        assert all(torch.equal(a, b) for a, b in zip(ours.scores, stock.scores)), method


def test_the_built_in_test_sets_default_to_exact_match_and_other_datasets_to_vqa_accuracy(monkeypatch, tmp_path):
    from gprune.evaluate import __main__ as cli

    monkeypatch.setattr(cli, "resolve_source", str)  # no need to write the test sets here
    for dataset, expected in (("easy-vqa", "exact"), ("shapes-scenes-blank", "exact"), (str(tmp_path / "x.parquet"), "vqa")):
        settings, _ = cli.build(cli.parse_args(["--model", "tiny", "--dataset", dataset, "--out", str(tmp_path)]), "cmd")
        assert settings.metric == expected, dataset
    settings, _ = cli.build(cli.parse_args(["--model", "tiny", "--dataset", "easy-vqa", "--metric", "vqa", "--out", str(tmp_path)]), "cmd")
    assert settings.metric == "vqa"


def test_the_shipped_evaluation_runs_open_in_the_failures_tab_with_real_failures():
    """`make run` (the shapes model) opens assets/runs/ in the Failures tab: both runs list, their first G-Prune
    failure at keep 0.05 is an answer the unpruned model got right, and its example opens in the explorer."""
    from pathlib import Path

    import app_failures

    runs = Path(__file__).resolve().parents[1] / "assets" / "runs"
    assert set(app_failures.list_runs(runs)) >= {"shapes-easy-vqa", "shapes-scenes"}
    for name in ("shapes-easy-vqa", "shapes-scenes"):
        run = app_failures.load_run(runs, name)
        assert not run.info["random_weights"] and run.settings["model"] == "shapes"
        failures = app_failures.failure_table(run, "gprune", 0.05)
        assert len(failures) > 0
        first = failures.iloc[0]
        assert first["unpruned accuracy %"] == 100.0 and first["pruned accuracy %"] == 0.0
        assert first["unpruned answer"] != first["pruned answer"]
        view = app_failures.example_view(run, int(first["row"]), "gprune", 0.05)
        assert view.image.is_file() and view.keep_ratio == 0.05
