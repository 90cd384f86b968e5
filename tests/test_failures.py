"""The Failures tab: pure functions on run folders, then the app through gradio_client and in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gradio_client import Client, handle_file

import app_failures as failures
from api_helpers import raw_call
from conftest import running_app
from gprune.evaluate.store import RESULT_SCHEMA
from test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from vqa_helpers import ASSETS, KEEP_RATIOS, METHODS

SUFFIX = "\nAnswer briefly."
SETTINGS = {"model": "tiny", "dataset": {"source": "/data/x", "split": "validation", "columns": {}}, "prompt_suffix": SUFFIX,
            "metric": "vqa", "methods": ["gprune", "fastv"], "keep_ratios": [0.25], "iterations": 3, "threshold": 0.4,
            "temperature": 0.05, "fastv_layer": 1, "max_new_tokens": 8, "seed": 0}


def result(row, method, answer, accuracy, matches, error=None, image="images/a.png"):
    return {"question_id": f"q{row}", "row": row, "method": method, "keep_ratio": 1.0 if method == "unpruned" else 0.25,
            "question": f"Question {row}?", "answers": ["red"] * 10, "answer": answer, "accuracy": accuracy,
            "matches_unpruned": matches, "visual_tokens": 100, "visual_tokens_kept": 100 if method == "unpruned" else 25,
            "flops_ratio": 1.0 if method == "unpruned" else 0.3, "prefill_seconds": 0.1, "selection_seconds": 0.0,
            "image": None if error else image, "error": error, "process": 0}


def hand_made_run(folder: Path, rows: list[dict]) -> Path:
    """A run folder with the given result rows (store.RESULT_SCHEMA) and one image."""
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes((ASSETS / "chelsea.png").read_bytes())
    (folder / "run.json").write_text(json.dumps({"settings": SETTINGS, "random_weights": True}))
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), folder / "results.parquet")
    return folder


# Per row: unpruned accuracy → G-Prune accuracy; rows 0–1 lose accuracy (100 and 30 points), row 2 only
# changes its (wrong) answer, row 3 keeps it, row 4 could not be evaluated.
DESIGNED = [
    result(0, "unpruned", "red", 1.0, True), result(0, "gprune", "blue", 0.0, False), result(0, "fastv", "red", 1.0, True),
    result(1, "unpruned", "red car", 0.6, True), result(1, "gprune", "car", 0.3, False), result(1, "fastv", "car", 0.3, False),
    result(2, "unpruned", "green", 0.0, True), result(2, "gprune", "blue", 0.0, False), result(2, "fastv", "green", 0.0, True),
    result(3, "unpruned", "red", 1.0, True), result(3, "gprune", "Red.", 1.0, True), result(3, "fastv", "red", 1.0, True),
    *[result(4, method, None, None, None, error="bad image") for method in ("unpruned", "gprune", "fastv")],
]


@pytest.fixture
def runs(tmp_path) -> Path:
    hand_made_run(tmp_path / "designed", DESIGNED)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "run.json").write_text("{}")  # no results.parquet yet
    (tmp_path / "notes.txt").write_text("not a run")
    return tmp_path


def test_runs_folder_comes_from_the_command_line_or_the_environment(tmp_path):
    assert failures.runs_folder(["--runs", str(tmp_path)], {}) == tmp_path.resolve()
    assert failures.runs_folder([], {"GPRUNE_RUNS": str(tmp_path)}) == tmp_path.resolve()
    assert failures.runs_folder([], {}) is None
    with pytest.raises(ValueError, match="is not a folder"):
        failures.runs_folder(["--runs", str(tmp_path / "missing")], {})


def test_only_finished_runs_inside_the_folder_can_be_opened(runs):
    assert failures.list_runs(runs) == ["designed"]
    for name in ("unfinished", "../designed", str(runs / "designed"), "notes.txt", None):
        with pytest.raises(ValueError, match="no finished run"):
            failures.load_run(runs, name)


def test_failure_list_filters_and_puts_the_worst_first(runs):
    run = failures.load_run(runs, "designed")
    listed = {kind: failures.failure_table(run, "gprune", 0.25, kind)["row"].tolist() for kind in failures.FILTERS}
    assert listed == {"dropped": [0, 1], "differ": [0, 1, 2], "all": [0, 1, 2, 3]}
    table = failures.failure_table(run, "gprune", 0.25, "all")
    assert table["drop (points)"].tolist() == [100.0, 30.0, 0.0, 0.0]
    assert table.iloc[0][["unpruned answer", "pruned answer", "human answers"]].tolist() == ["red", "blue", "red ×10"]
    assert failures.failure_table(run, "fastv", 0.25, "dropped")["row"].tolist() == [1]
    for method, ratio, kind, message in (("tome", 0.25, "all", "method must be"), ("gprune", 0.5, "all", "keep ratio must be"),
                                         ("gprune", 0.25, "worst", "filter must be")):
        with pytest.raises(ValueError, match=message):
            failures.failure_table(run, method, ratio, kind)


def test_an_example_opens_with_its_prompt_settings_and_answers(runs, tmp_path):
    run = failures.load_run(runs, "designed")
    view = failures.example_view(run, 1, "gprune", 0.25)
    assert view.image == (runs / "designed" / "images" / "a.png").resolve()
    assert view.prompt == "Question 1?" + SUFFIX
    assert (view.keep_ratio, view.methods, view.threshold, view.temperature, view.iterations, view.fastv_layer,
            view.max_new_tokens) == (0.25, ["gprune", "fastv"], 0.4, 0.05, 3, 1, 8)
    assert "| G-Prune ◀ | 0.25 | car | 30 |" in view.markdown and "| Unpruned | 1 | red car | 60 |" in view.markdown
    served = tmp_path / "served"
    served.mkdir()
    assert Path(failures.served_copy(view.image, served)).read_bytes() == view.image.read_bytes()
    with pytest.raises(ValueError, match="row 4 was not evaluated"):
        failures.example_view(run, 4, "gprune", 0.25)
    for row in ("../x", "1", 1.7, True, float("inf"), float("nan"), None, [1]):
        with pytest.raises(ValueError, match="row must be the whole row number of an example"):
            failures.example_view(run, row, "gprune", 0.25)
    assert failures.example_view(run, 1.0, "gprune", "0.25").keep_ratio == 0.25  # JSON numbers; a ratio as text


def test_an_image_path_outside_the_run_is_refused(tmp_path):
    rows = [result(0, method, "red", 1.0, True, image="../../secret.png") for method in ("unpruned", "gprune", "fastv")]
    (tmp_path / "secret.png").write_bytes(b"secret")
    hand_made_run(tmp_path / "runs" / "evil", rows)
    with pytest.raises(ValueError, match="image of row 0 is missing"):
        failures.example_view(failures.load_run(tmp_path / "runs", "evil"), 0, "gprune", 0.25)


def test_accuracy_table_is_the_run_summary(evaluated_run):
    run = failures.load_run(evaluated_run.runs, evaluated_run.folder.name)
    table = failures.accuracy_table(run)
    summary = json.loads((evaluated_run.folder / "summary.json").read_text())["table"]
    assert len(table) == len(summary) == 1 + len(METHODS) * len(KEEP_RATIOS)
    assert table["accuracy %"].tolist() == [round(100 * e["accuracy"], 1) for e in summary]
    assert table["method"].iloc[0] == "Unpruned" and table["keep ratio"].tolist()[1:] == [e["keep_ratio"] for e in summary[1:]]


# ------------------------------------------------------------------------------------------------ server


@pytest.fixture(scope="module")
def failures_app(tmp_path_factory, evaluated_run):
    """`python app.py` (tiny model, one torch thread as in the evaluation) with GPRUNE_RUNS = the tests' runs folder."""
    env = {"GPRUNE_RUNS": str(evaluated_run.runs), "OMP_NUM_THREADS": "1"}
    with running_app(tmp_path_factory.mktemp("failures_app"), env) as app:
        yield app


def test_failures_api_lists_filters_opens_and_the_explorer_reproduces_the_run(failures_app, evaluated_run):
    client = Client(failures_app.url, verbose=False)
    name = evaluated_run.folder.name
    assert client.predict(api_name="/failure_runs")["choices"] == [[name, name]]
    description, accuracy, method, keep, listing = client.predict(name, api_name="/failure_run")
    assert name.replace("-", r"\-") in description and "Random-weight toy model" in description and "2 could not be evaluated" in description
    assert len(accuracy["data"]) == 1 + len(METHODS) * len(KEEP_RATIOS)
    assert method["value"] == "gprune" and keep["value"] == min(KEEP_RATIOS)

    rows = pq.read_table(evaluated_run.folder / "results.parquet").to_pylist()
    accuracy_of = {(r["row"], r["method"], r["keep_ratio"]): r["accuracy"] for r in rows if r["error"] is None}
    for chosen in METHODS:
        listed = client.predict(name, chosen, 0.11, "dropped", api_name="/failures")
        expected = sorted((row for (row, m, k) in accuracy_of if m == chosen and k == 0.11
                           and accuracy_of[(row, "unpruned", 1.0)] > accuracy_of[(row, m, k)]),
                          key=lambda row: (accuracy_of[(row, chosen, 0.11)] - accuracy_of[(row, "unpruned", 1.0)], row))
        assert [line[0] for line in listed["data"]] == expected
    differing = client.predict(name, "gprune", 0.11, "differ", api_name="/failures")["data"]
    assert differing and all(line[3] != line[4] for line in differing)  # unpruned vs pruned answer
    with pytest.raises(Exception, match="worst"):
        client.predict(name, "gprune", 0.11, "worst", api_name="/failures")

    row = differing[0][0]
    opened = client.predict(name, row, "gprune", 0.11, api_name="/failure_example")
    preview, details, image, prompt, keep_ratio, methods, threshold, temperature, iterations, fastv_layer, max_new_tokens = opened
    stored = next(r for r in rows if r["row"] == row and r["method"] == "unpruned")
    assert Path(image).read_bytes() == (evaluated_run.folder / stored["image"]).read_bytes()
    assert prompt == stored["question"] + "\nAnswer the question using a single word or phrase."
    assert (keep_ratio, methods, iterations, fastv_layer, max_new_tokens) == (0.11, list(METHODS), 5, 2, 4)
    assert f"**Row {row}**" in details

    # One Run of the explorer with what the click filled in gives the run's answers for that example.
    *_, summary = client.predict(handle_file(image), prompt, keep_ratio, threshold, temperature, iterations, fastv_layer,
                                 methods, max_new_tokens, "grid", api_name="/analyze")
    answers = {(r["method"], r["keep_ratio"]): r["answer"] for r in rows if r["row"] == row}
    assert summary["reference"]["answer"] == answers[("unpruned", 1.0)]
    assert {m: summary["results"][m]["answer"] for m in METHODS} == {m: answers[(m, 0.11)] for m in METHODS}
    with pytest.raises(Exception, match="not in the list of choices|no finished run"):
        client.predict("../" + name, row, "gprune", 0.11, api_name="/failure_example")


def test_failures_tab_in_the_browser_loads_a_clicked_example_into_the_explorer(failures_app):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (make chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)  # bounds a hang only: a busy machine is slow
        page.goto(failures_app.url)
        page.wait_for_selector("#run-button")
        tab = page.get_by_role("tab", name="Failures")
        if not tab.is_visible():  # the tab row overflows into Gradio's "More tabs" menu
            page.locator("button[aria-label='More tabs']").first.click()
            tab = page.locator(".overflow-dropdown button", has_text="Failures")
        tab.click()
        page.wait_for_function("document.querySelector('#failures-description').innerText.includes('tiny-textvqa-mini')")
        page.get_by_label("answers differ").check()
        cell = page.locator("#failures-list [role=gridcell][data-col='1']").first
        cell.wait_for()
        question = cell.inner_text().strip()
        page.screenshot(path=str(SCREENSHOTS / "07_failures_list.png"), full_page=True)
        cell.click()
        page.wait_for_function("document.querySelector('#failure-details').innerText.includes('Row ')")
        page.wait_for_selector("#input-image img")
        page.wait_for_selector("#failure-image img")
        assert page.get_by_label("Question").input_value() == question + "\nAnswer the question using a single word or phrase."
        assert page.get_by_label("Keep ratio ρ").first.input_value() == "0.11"
        page.screenshot(path=str(SCREENSHOTS / "08_failure_loaded.png"), full_page=True)
        browser.close()


# ------------------------------------------------------------------------------------------ hostile runs


def rewrite_run_json(folder: Path, info) -> None:
    (folder / "run.json").write_text(json.dumps(info) if not isinstance(info, str) else info)


@pytest.mark.parametrize("info, message", [
    ([1, 2], "its run.json has no settings"),
    ({"random_weights": True}, "its run.json has no settings"),
    ("{not json", "its run.json is not valid JSON"),
    ({"settings": {**SETTINGS, "methods": ["gprune", "magic"]}}, "its methods ['gprune', 'magic'] are not among"),
    ({"settings": {**SETTINGS, "keep_ratios": ["0.25"]}}, "its keep ratios ['0.25'] are not numbers in (0, 1]"),
    ({"settings": {**SETTINGS, "iterations": "3"}}, "its run.json has no valid setting 'iterations'"),
    ({"settings": {**SETTINGS, "dataset": {"source": 5, "split": "x"}}}, "its run.json has no dataset source and split"),
])
def test_a_malformed_run_json_is_refused_by_name(tmp_path, info, message):
    folder = hand_made_run(tmp_path / "runs" / "bad", DESIGNED)
    rewrite_run_json(folder, info)
    with pytest.raises(ValueError, match=re.escape(f"run 'bad' cannot be opened: {message}")):
        failures.load_run(tmp_path / "runs", "bad")


def test_unreadable_results_are_refused_without_a_server_path(tmp_path):
    folder = hand_made_run(tmp_path / "runs" / "corrupt", DESIGNED)
    (folder / "results.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError) as refused:
        failures.load_run(tmp_path / "runs", "corrupt")
    assert str(refused.value) == "run 'corrupt' cannot be opened: its results.parquet is not a readable Parquet file"
    other = [{**row, "method": "magic"} if row["method"] == "fastv" else row for row in DESIGNED]
    hand_made_run(tmp_path / "runs" / "foreign", other)
    with pytest.raises(ValueError, match=r"results hold methods \['magic'\] that its settings do not list"):
        failures.load_run(tmp_path / "runs", "foreign")


def test_results_with_text_where_numbers_belong_are_refused(tmp_path):
    rows = [{**row, "accuracy": None if row["accuracy"] is None else "high"} for row in DESIGNED]
    schema = RESULT_SCHEMA.set(RESULT_SCHEMA.get_field_index("accuracy"), pa.field("accuracy", pa.string()))
    folder = hand_made_run(tmp_path / "runs" / "texty", DESIGNED)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "results.parquet")
    with pytest.raises(ValueError, match="run 'texty' cannot be opened: its results hold values of the wrong kind"):
        failures.load_run(tmp_path / "runs", "texty")


def test_symlinks_in_the_runs_folder_are_not_followed(tmp_path):
    outside = hand_made_run(tmp_path / "outside", DESIGNED)
    runs = tmp_path / "runs"
    (runs / "linked").mkdir(parents=True)
    (runs / "linked" / "run.json").write_text((outside / "run.json").read_text())
    (runs / "linked" / "results.parquet").symlink_to(outside / "results.parquet")
    (runs / "whole-link").symlink_to(outside, target_is_directory=True)
    real = hand_made_run(runs / "real", [{**row, "image": "run.json"} if row["row"] == 1 else row for row in DESIGNED])
    (real / "images" / "b.png").symlink_to(outside / "images" / "a.png")
    (real / "images" / "c.png").symlink_to(outside / "run.json")
    assert failures.list_runs(runs) == ["real"]
    run = failures.load_run(runs, "real")
    with pytest.raises(ValueError, match="the image of row 1 is missing"):  # an image column naming run.json
        failures.example_view(run, 1, "gprune", 0.25)
    for target in ("images/b.png", "images/c.png", None):
        rows = [{**row, "image": target} for row in DESIGNED if row["error"] is None]
        hand_made_run(runs / f"to-{str(target)[-5:-4]}", rows)
        for link in ("b.png", "c.png"):
            (runs / f"to-{str(target)[-5:-4]}" / "images" / link).symlink_to(outside / "images" / "a.png")
        with pytest.raises(ValueError, match="the image of row 0 is missing"):
            failures.example_view(failures.load_run(runs, f"to-{str(target)[-5:-4]}"), 0, "gprune", 0.25)


def test_run_data_is_escaped_in_markdown_and_local_paths_are_not_shown(tmp_path):
    hostile = "![x](http://127.0.0.1:9/pixel.png) [click](http://phish.example) <img src=x onerror=alert(1)> **bold**"
    rows = [{**row, "question": hostile, "answer": hostile} for row in DESIGNED]
    run = failures.load_run(tmp_path / "runs", hand_made_run(tmp_path / "runs" / "hostile", rows).name)
    markdown = failures.example_view(run, 0, "gprune", 0.25).markdown
    for fragment in ("![x](", "[click](", "**bold**"):
        assert fragment not in markdown
    assert not re.search(r"(?<!\\)<", markdown)  # no unescaped tag
    assert r"\!\[x\]\(http://127\.0\.0\.1:9/pixel\.png\)" in markdown and r"\<img src=x" in markdown
    description = failures.run_description(run, "tiny")
    assert "/data/x" not in description and r"x \(a local dataset\)" in description
    assert failures.dataset_label("lmms-lab/textvqa") == "lmms-lab/textvqa"


def test_a_listing_is_computed_once_per_version_of_the_run(runs, monkeypatch):
    computed = []
    original = failures._failure_table
    monkeypatch.setattr(failures, "_failure_table", lambda *args: computed.append(args[1:]) or original(*args))
    for _ in range(3):
        assert failures.failure_table(failures.load_run(runs, "designed"), "gprune", 0.25, "all")["row"].tolist() == [0, 1, 2, 3]
    assert computed == [("gprune", 0.25, "all")]
    pq.write_table(pa.Table.from_pylist(DESIGNED[:9], schema=RESULT_SCHEMA), runs / "designed" / "results.parquet")
    assert failures.failure_table(failures.load_run(runs, "designed"), "gprune", 0.25, "all")["row"].tolist() == [0, 1, 2]
    assert len(computed) == 2  # a rewritten results.parquet is read again


def test_a_run_is_summarised_once_per_version_of_its_results(runs, monkeypatch):
    summarised = []
    original = failures.summarize
    monkeypatch.setattr(failures, "summarize", lambda rows, *args: summarised.append(len(rows)) or original(rows, *args))
    for _ in range(3):  # what each page load and each Run-list click does
        table = failures.accuracy_table(failures.load_run(runs, "designed"))
        assert table["examples"].tolist() == [4, 4, 4] and table["accuracy %"].tolist() == [65.0, 32.5, 57.5]
    assert summarised == [len(DESIGNED)]
    results = runs / "designed" / "results.parquet"
    pq.write_table(pa.Table.from_pylist(DESIGNED[:9], schema=RESULT_SCHEMA), results)  # a resumed run rewrites it
    assert failures.accuracy_table(failures.load_run(runs, "designed"))["examples"].tolist() == [3, 3, 3]
    assert summarised == [len(DESIGNED), 9]
    os.utime(results, ns=(results.stat().st_atime_ns, results.stat().st_mtime_ns + 10**9))  # same bytes, touched
    failures.load_run(runs, "designed")
    assert summarised == [len(DESIGNED), 9, 9]


def test_the_failures_api_works_in_any_order_and_opens_runs_finished_after_start_up(failures_app, evaluated_run):
    """A fresh session calls /failures and /failure_example first; a run added to the folder after the server
    started opens without /failure_runs; hostile values get messages."""
    late = hand_made_run(evaluated_run.runs / "late", DESIGNED)
    try:
        client = Client(failures_app.url, verbose=False)
        listed = client.predict("late", "gprune", "0.25", "all", api_name="/failures")
        assert [line[0] for line in listed["data"]] == [0, 1, 2, 3]
        opened = client.predict("late", 1, "gprune", 0.25, api_name="/failure_example")
        assert opened[3] == "Question 1?" + SUFFIX
        for row, message in ((1.7, "got 1.7"), (True, "got True"), ("1", "got '1'")):
            with pytest.raises(Exception, match=f"row must be the whole row number of an example, {message}"):
                client.predict("late", row, "gprune", 0.25, api_name="/failure_example")
        with pytest.raises(Exception, match="method must be one of gprune, fastv"):
            client.predict("late", 1, "magic", 0.25, api_name="/failure_example")
        with pytest.raises(Exception, match="there is no finished run called 'x"):
            client.predict("x" * 5000, 1, "gprune", 0.25, api_name="/failure_example")
        event, data = raw_call(failures_app.url, "failure_example", ["late", float("inf"), "gprune", 0.25])
        assert event == "error" and "row must be the whole row number of an example, got inf" in data["error"]
        rewrite_run_json(late, [1])
        with pytest.raises(Exception, match="run 'late' cannot be opened: its run.json has no settings"):
            client.predict("late", api_name="/failure_run")
        assert "Traceback" not in failures_app.log()
    finally:
        shutil.rmtree(late)
