"""`python -m gprune.evaluate`: VQA accuracy (ours; the reference modes are in test_metric_modes.py), data loading,
fingerprints, process shares, and the command end to end (1 vs 2 processes, resume after kill -9, a raised
--limit, refused re-runs, a busy folder, workers that end with their launcher, the progress bar, the summary
table)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import app_failures as failures
from gprune.evaluate import (
    RESULT_SCHEMA, DatasetSpec, ProcessShare, RunFolder, normalize_answer, open_split, parse_columns, read_example,
    summarize, vqa_accuracy,
)
from gprune.evaluate.__main__ import build, main, parse_args
from gprune.evaluate.launch import requested_cpu_processes
from gprune.evaluate.metric import exact_match, same_answer
from vqa_helpers import (
    BAD_ROWS, CHEAP, EMPTY_QUESTION_ROW, INTEGER_ID_FEATURES, KEEP_RATIOS, METHODS, ROOT, UNDECODABLE_ROW,
    comparable_rows, descendants, environment, evaluate_command, run_evaluate, running, save_imagefolder, save_parquet,
    save_to_disk, shard_rows, vqa_rows,
)

KEYS_PER_EXAMPLE = 1 + len(METHODS) * len(KEEP_RATIOS)
ROWS = 8

# ------------------------------------------------------------------------------------------------ metric


@pytest.mark.parametrize("text, normalised", [
    ("The Dog.", "dog"), ("a red car", "red car"), ("Two", "2"), ("none", "0"), ("TEN apples", "10 apples"),
    ("dont", "don't"), ("Isnt it", "isn't it"), ("1,000", "1000"), ("3.5", "3.5"), ("yes!", "yes"),
    ("black-and-white", "black and white"), ("left - right", "left right"), ("e.g.", "eg"),
    ("  Yes\n", "yes"), ("(hello) world?", "hello world"),
])
def test_normalisation_follows_the_vqa_rules(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize("prediction, answers, expected", [
    ("yes", ["yes"] * 10, 1.0),
    ("yes", ["no"] * 10, 0.0),
    # 2 of 10 humans: each "yes" human's 9 others hold 1 match (1/3), each "no" human's hold 2 (2/3): (2/3 + 16/3) / 10
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
    # 3 of 10: the three "yes" subsets hold 2 matches (2/3), the seven others 3 (1): (2 + 7) / 10
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
    ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
    # 1 of 10: its own subset holds 0, the nine others 1 (1/3): 3 / 10
    ("yes", ["yes"] + ["no"] * 9, 0.3),
    ("Two.", ["2"] * 2 + ["two"] * 2 + ["3"] * 6, 1.0),  # normalised: four humans said "2"
    ("The cat", ["cat", "a cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog", "dog"], 0.6),
    ("dog", ["dog"], 1.0),  # a single reference answer: exact match
    ("cat", ["dog"], 0.0),
])
def test_vqa_accuracy_hand_cases(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_exact_match_and_agreement_use_the_normalisation():
    assert exact_match("Two dogs.", ["2 dogs", "cats"]) == 1.0 and exact_match("dog", ["cat"]) == 0.0
    assert same_answer("The Red car!", "red car") and not same_answer("red", "blue")
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])


# ------------------------------------------------------------------------------------------------ data


def read_all(spec: DatasetSpec, limit=None):
    share = ProcessShare(open_split(spec), spec, limit=limit, done=set(), rank=0, world=1)
    return list(share), share


def test_every_local_format_reads_the_same_examples(tmp_path):
    rows = vqa_rows()
    sources = {
        "save_to_disk": save_to_disk(rows, tmp_path / "disk"),
        "parquet folder": save_parquet(rows, tmp_path / "parquet"),
        "parquet file": save_parquet(rows, tmp_path / "file") / "validation-00000-of-00001.parquet",
        "imagefolder": save_imagefolder(rows, tmp_path / "imagefolder"),
    }
    for name, source in sources.items():
        examples, share = read_all(DatasetSpec(str(source)))
        assert [e.row for e in examples] == list(range(ROWS)) and share.rows_seen == ROWS, name
        assert [e.question_id for e in examples] == [r["question_id"] for r in rows], name
        assert [e.question for e in examples] == [r["question"].strip() for r in rows], name
        assert [e.answers for e in examples] == [r["answers"] for r in rows], name
        assert [e.image_bytes for e in examples] == [r["image"]["bytes"] for r in rows], name  # byte for byte
        assert [e.problem for e in examples] == [None] * EMPTY_QUESTION_ROW + ["the question is empty"] + [None, None], name


def test_column_mapping_and_missing_columns(tmp_path):
    renamed = {"image": "img", "question": "query", "answers": "gt", "question_id": "qid"}
    source = str(save_parquet(vqa_rows(), tmp_path / "renamed", renamed))
    spec = DatasetSpec(source, columns=parse_columns("image=img, question=query,answers=gt,question_id=qid"))
    examples, _ = read_all(spec, limit=2)
    assert [e.question_id for e in examples] == ["qastronaut", "qcoffee"] and examples[0].answers[0] == "yes"
    with pytest.raises(ValueError, match=r"column 'image' \(image\) is not in .*img.*--columns image=COLUMN"):
        open_split(DatasetSpec(source))
    with pytest.raises(ValueError, match="column 'qid2' \\(question_id\\)"):
        open_split(DatasetSpec(source, columns={**spec.columns, "question_id": "qid2"}))
    with pytest.raises(ValueError, match="split 'test' could not be opened"):
        open_split(DatasetSpec(source, split="test", columns=spec.columns))
    # Without answers and ids the row index stands in; other answer shapes (VQAv2 dicts, GQA strings) are read.
    plain = DatasetSpec(source, columns={"image": "img", "question": "query"})
    raw = {"img": b"x", "query": "Q?"}
    assert read_example(7, raw, plain).question_id == "7" and read_example(7, raw, plain).answers is None
    assert read_example(7, raw, plain, pa.int64()).question_id == 7  # as the split's id type says
    vqav2 = {**raw, "answers": [{"answer": "two", "answer_id": 1}, {"answer": "2", "answer_id": 2}]}
    assert read_example(0, vqav2, DatasetSpec(source, columns={"image": "img", "question": "query"})).answers == ["two", "2"]
    gqa = DatasetSpec(source, columns={"image": "img", "question": "query", "answers": "answer"})
    assert read_example(0, {**raw, "answer": "yes"}, gqa).answers == ["yes"]
    assert read_example(0, {"img": None, "query": "Q?"}, plain).problem == "the row has no image"
    for bad in ("image", "image=", "colour=red", "image=a,image=b"):
        with pytest.raises(ValueError, match="--columns|role"):
            parse_columns(bad)


def test_fingerprints_follow_the_content_not_the_place(tmp_path):
    changed_rows = vqa_rows(answers={6: ["no"] * 10})  # one answer of one row beyond the first rows differs
    writers = {
        "save_to_disk": lambda rows, folder: save_to_disk(rows, folder),
        "parquet folder": lambda rows, folder: save_parquet(rows, folder),
        "parquet file": lambda rows, folder: save_parquet(rows, folder) / "validation-00000-of-00001.parquet",
        "imagefolder": lambda rows, folder: save_imagefolder(rows, folder),
    }
    for name, write in writers.items():
        original, copy, changed = (open_split(DatasetSpec(str(write(rows, tmp_path / name / version)))).fingerprint
                                   for version, rows in (("a", vqa_rows()), ("b", vqa_rows()), ("c", changed_rows)))
        assert original.startswith("sha256:") and original == copy != changed, name
    spec = DatasetSpec(str(tmp_path / "save_to_disk" / "a"))
    assert open_split(spec).question_id_type == pa.string()
    integer_ids = save_to_disk([{**row, "question_id": 100 + i} for i, row in enumerate(vqa_rows())], tmp_path / "ints",
                               INTEGER_ID_FEATURES)
    assert open_split(DatasetSpec(str(integer_ids))).question_id_type == pa.int64()
    no_ids = save_parquet(vqa_rows(), tmp_path / "renamed", {"question_id": "qid"})
    assert open_split(DatasetSpec(str(no_ids))).question_id_type == pa.int64()  # the row index stands in


def test_a_parquet_file_is_labelled_by_its_name(tmp_path):
    table = pq.read_table(save_parquet(vqa_rows(), tmp_path) / "validation-00000-of-00001.parquet")
    for name, split in (("validation-00000-of-00001.parquet", "validation"), ("easy-vqa-test-v1.parquet", "test"),
                        ("train.parquet", "train"), ("questions.parquet", "file"), ("contest.parquet", "file")):
        pq.write_table(table, tmp_path / name)
        settings, _ = build(parse_args(["--model", "tiny", "--dataset", str(tmp_path / name), "--out", "x"]), "")
        assert settings.dataset.split == split, name
        assert len(list(ProcessShare(open_split(settings.dataset), settings.dataset, limit=2, done=set(), rank=0, world=1))) == 2
    folder = save_to_disk(vqa_rows(), tmp_path / "disk")  # a folder keeps --split
    settings, _ = build(parse_args(["--model", "tiny", "--dataset", str(folder), "--split", "validation", "--out", "x"]), "")
    assert settings.dataset.split == "validation"


def test_process_shares_split_the_remaining_rows_evenly(tmp_path):
    source = str(save_to_disk(vqa_rows(), tmp_path / "disk"))
    spec = DatasetSpec(source)
    done = {1, 4, 5}
    for limit, world in ((None, 3), (7, 2), (None, 1)):
        shares = [ProcessShare(open_split(spec), spec, limit=limit, done=done, rank=rank, world=world) for rank in range(world)]
        rows = [[e.row for e in share] for share in shares]
        todo = [r for r in range(limit or ROWS) if r not in done]
        assert sorted(r for part in rows for r in part) == todo  # nothing lost, nothing twice
        assert max(map(len, rows)) - min(map(len, rows)) <= 1
        assert [share.size for share in shares] == [len(part) for part in rows]
        assert all(share.rows_seen == (limit or ROWS) for share in shares)


def test_lone_cpu_child_of_accelerate_launch_asks_for_its_processes():
    env = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}
    launch = ["python", "/venv/bin/accelerate", "launch", "--num_processes", "3", "--cpu", "-m", "gprune.evaluate", "--out", "x"]
    assert requested_cpu_processes(env, launch) == 3
    assert requested_cpu_processes({**env, "LOCAL_RANK": "0"}, launch) is None  # a real launcher set the rank
    assert requested_cpu_processes({k: v for k, v in env.items() if k != "MASTER_ADDR"}, launch) is None  # N = 1
    module_form = ["python", "-m", "accelerate.commands.launch", "--num_processes=2", "--cpu", "script.py"]
    assert requested_cpu_processes(env, module_form) == 2
    with pytest.raises(ValueError, match="several machines"):
        requested_cpu_processes(env, launch[:5] + ["--num_machines", "2", "--machine_rank", "0", "--main_process_ip", "h",
                                                    "--main_process_port", "1"] + launch[5:])


# ------------------------------------------------------------------------------------------------ report


def test_summary_counts_failures_and_averages_the_rest():
    def row(example, method, ratio, answer, accuracy, matches, error=None):
        return {"row": example, "method": method, "keep_ratio": ratio, "answer": answer, "accuracy": accuracy,
                "matches_unpruned": matches, "visual_tokens": 100, "visual_tokens_kept": 100 if ratio == 1 else 30,
                "flops_ratio": 1.0 if ratio == 1 else 0.25, "prefill_seconds": 0.2 if ratio == 1 else 0.1,
                "answers": None if error else ["a"], "error": error}

    rows = [row(0, "unpruned", 1.0, "a", 1.0, True), row(0, "gprune", 0.25, "b", 0.0, False),
            row(1, "unpruned", 1.0, "a", 0.5, True), row(1, "gprune", 0.25, "a", 0.5, True),
            row(2, "unpruned", 1.0, None, None, None, "bad"), row(2, "gprune", 0.25, None, None, None, "bad")]
    summary = summarize(rows, ["gprune"], [0.25])
    assert (summary["examples"], summary["failed_examples"], summary["examples_with_answers"]) == (3, 1, 2)
    unpruned, gprune = summary["table"]
    assert unpruned["accuracy"] == 0.75 and gprune["accuracy"] == 0.25 and gprune["relative_accuracy"] == pytest.approx(1 / 3)
    assert gprune["same_answer"] == 0.5 and gprune["examples"] == 2 and gprune["visual_tokens_kept"] == 30
    assert gprune["flops_ratio"] == 0.25 and gprune["prefill_seconds"] == 0.1 and unpruned["same_answer"] == 1.0


# ------------------------------------------------------------------------------------------------ command


def test_results_have_every_key_once_and_bad_examples_as_error_rows(evaluated_run):
    table = pq.read_table(evaluated_run.folder / "results.parquet")
    assert set(RESULT_SCHEMA.names) <= set(table.column_names)
    assert table.schema.field("question_id").type == pa.string()  # the dataset's string ids stay strings
    rows = table.to_pylist()
    keys = [(r["row"], r["method"], r["keep_ratio"]) for r in rows]
    expected = {(row, "unpruned", 1.0) for row in range(ROWS)} | {
        (row, method, ratio) for row in range(ROWS) for method in METHODS for ratio in KEEP_RATIOS}
    assert len(keys) == len(set(keys)) == ROWS * KEYS_PER_EXAMPLE and set(keys) == expected
    for r in rows:
        if r["row"] in BAD_ROWS:
            assert r["answer"] is None and r["accuracy"] is None and r["image"] is None
            assert ("could not be decoded" if r["row"] == UNDECODABLE_ROW else "question is empty") in r["error"]
            continue
        assert r["error"] is None and isinstance(r["answer"], str)
        assert r["accuracy"] == pytest.approx(vqa_accuracy(r["answer"], r["answers"]))
        reference = next(u for u in rows if u["row"] == r["row"] and u["method"] == "unpruned")
        assert r["matches_unpruned"] == same_answer(r["answer"], reference["answer"])
        assert r["visual_tokens_kept"] <= r["visual_tokens"] and 0 < r["flops_ratio"] <= 1
        assert (r["visual_tokens_kept"] == r["visual_tokens"]) == (r["method"] == "unpruned")
        with Image.open(evaluated_run.folder / r["image"]) as image:  # the run keeps the image it evaluated
            image.verify()
    summary = json.loads((evaluated_run.folder / "summary.json").read_text())
    assert (summary["examples"], summary["failed_examples"]) == (ROWS, len(BAD_ROWS))
    assert summary["merge"] == {"rows_expected": ROWS, "duplicates_dropped": 0, "missing_rows": [], "incomplete_rows": []}


def test_summary_and_printed_table_match_the_results(evaluated_run):
    rows = [r for r in pq.read_table(evaluated_run.folder / "results.parquet").to_pylist() if r["error"] is None]
    summary = json.loads((evaluated_run.folder / "summary.json").read_text())
    table = {(e["method"], e["keep_ratio"]): e for e in summary["table"]}
    assert list(table)[0] == ("unpruned", 1.0) and len(table) == KEYS_PER_EXAMPLE
    for (method, ratio), entry in table.items():
        group = [r for r in rows if r["method"] == method and r["keep_ratio"] == ratio]
        assert entry["examples"] == len(group) == ROWS - len(BAD_ROWS)
        assert entry["accuracy"] == pytest.approx(statistics.fmean(r["accuracy"] for r in group))
        assert entry["same_answer"] == pytest.approx(statistics.fmean(r["matches_unpruned"] for r in group))
        assert entry["flops_ratio"] == pytest.approx(statistics.fmean(r["flops_ratio"] for r in group))
    # The fixture's human answers agree with the tiny model's unpruned answer 10, 3 and 1 times on rows 0–2.
    assert table[("unpruned", 1.0)]["accuracy"] == pytest.approx((1.0 + 0.9 + 0.3) / 6)
    printed = [line for line in evaluated_run.stdout.splitlines() if line.startswith("| ")]
    assert printed[0].split("|")[1].strip() == "keep ratio" and len(printed) == 1 + KEYS_PER_EXAMPLE
    assert printed[1].split("|")[2].strip() == "Unpruned" and "36.7" in printed[1]  # accuracy in %
    assert "random-weight toy model" in evaluated_run.stdout


def test_two_processes_give_the_same_rows_as_one(evaluated_run, vqa_dataset, tmp_path):
    done = run_evaluate(vqa_dataset, tmp_path / "two", processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert comparable_rows(tmp_path / "two" / "results.parquet") == comparable_rows(evaluated_run.folder / "results.parquet")
    processes = set(pq.read_table(tmp_path / "two" / "results.parquet")["process"].to_pylist())
    assert processes == {0, 1}  # both processes really evaluated examples
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["invocation"]["processes"] == 2 and summary["invocation"]["examples_evaluated"] == ROWS


def test_a_killed_run_resumes_where_it_stopped(evaluated_run, vqa_dataset, tmp_path):
    out = tmp_path / "killed"
    folder = RunFolder(out)
    process = subprocess.Popen(evaluate_command(vqa_dataset, out, "--shard-size", "1"), cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # No deadline: the run is finite, so the loop ends with its shards or with the run (which then fails).
        while len(folder.shard_paths()) < 2:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = {path.name: path.read_bytes() for path in folder.shard_paths()}
    assert 2 <= len(before) < ROWS and not (out / "results.parquet").exists()

    done = run_evaluate(vqa_dataset, out, "--shard-size", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    after = folder.shard_paths()
    assert all((out / "shards" / name).read_bytes() == data for name, data in before.items())  # kept as they were
    new = [path for path in after if path.name not in before]
    old_rows, new_rows = shard_rows([out / "shards" / name for name in before]), shard_rows(new)
    assert not old_rows & new_rows and old_rows | new_rows == set(range(ROWS))  # only the rest ran
    assert not list((out / "shards").glob(".*.tmp"))
    assert comparable_rows(out / "results.parquet") == comparable_rows(evaluated_run.folder / "results.parquet")
    assert json.loads((out / "summary.json").read_text())["invocation"]["examples_evaluated"] == len(new_rows)


def test_raising_the_limit_runs_only_the_new_rows(evaluated_run, vqa_dataset, tmp_path):
    out = tmp_path / "growing"
    first = run_evaluate(vqa_dataset, out, "--limit", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert {r["row"] for r in comparable_rows(out / "results.parquet")} == {0, 1}
    before = set(RunFolder(out).shard_paths())
    second = run_evaluate(vqa_dataset, out, "--limit", "4")
    assert second.returncode == 0, second.stderr[-3000:]
    assert shard_rows(sorted(set(RunFolder(out).shard_paths()) - before)) == {2, 3}
    reference = [r for r in comparable_rows(evaluated_run.folder / "results.parquet") if r["row"] < 4]
    assert comparable_rows(out / "results.parquet") == reference
    assert json.loads((out / "run.json").read_text())["limit"] == 4


def test_other_settings_in_the_same_folder_are_refused(evaluated_run, vqa_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(evaluated_run.folder, copy)
    results = (copy / "results.parquet").read_bytes()
    done = run_evaluate(vqa_dataset, copy, "--keep-ratios", "0.25")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "keep_ratios: [0.5, 0.11] there, [0.25] now" in errors[0] and "Traceback" not in done.stderr
    other_metric = run_evaluate(vqa_dataset, copy, "--metric", "m4c")  # its rows were scored with another metric
    assert other_metric.returncode == 2 and 'metric: "vqa" there, "m4c" now' in other_metric.stderr
    assert (copy / "results.parquet").read_bytes() == results


def test_a_changed_dataset_is_refused_even_with_a_larger_limit(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    save_to_disk(vqa_rows(), data)
    first = run_evaluate(data, out, *CHEAP, "--limit", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    recorded = json.loads((out / "run.json").read_text())["settings"]["dataset"]
    assert recorded["fingerprint"] == open_split(DatasetSpec(str(data))).fingerprint
    shards = {path.name: path.read_bytes() for path in RunFolder(out).shard_paths()}
    shutil.rmtree(data)
    save_to_disk(vqa_rows(answers={2: ["no"] * 10}), data)  # same path, a row beyond the first two changed

    again = run_evaluate(data, out, *CHEAP, "--limit", "4")
    assert again.returncode == 2
    errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dataset's content is not the one" in errors[0] and recorded["fingerprint"] in errors[0]
    assert str(tmp_path) not in errors[0] and "Traceback" not in again.stderr  # no server path in the message
    assert {path.name: path.read_bytes() for path in RunFolder(out).shard_paths()} == shards  # nothing added


def test_a_busy_folder_is_refused_before_any_setup(tmp_path, capsys):
    out, not_a_dataset = tmp_path / "run", tmp_path / "empty"
    out.mkdir()
    not_a_dataset.mkdir()
    with open(out / ".lock", "w") as lock:  # another command is writing there
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Opening this "dataset" fails: the lock must be refused first, before any data or model is loaded.
        assert main(["--model", "tiny", "--dataset", str(not_a_dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: another evaluation is writing into") and "could not be" not in err


def test_integer_question_ids_stay_integers_for_the_failures_tab(tmp_path):
    rows = [{**row, "question_id": 100 + index} for index, row in enumerate(vqa_rows())]
    data, out = save_to_disk(rows, tmp_path / "data", INTEGER_ID_FEATURES), tmp_path / "runs" / "ints"
    done = run_evaluate(data, out, *CHEAP, "--limit", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out / "results.parquet")
    assert table.schema.field("question_id").type == pa.int64()
    assert sorted(set(table["question_id"].to_pylist())) == [100, 101, 102]
    run = failures.load_run(tmp_path / "runs", "ints")
    assert sorted(failures.failure_table(run, "gprune", 0.5, "all")["row"]) == [0, 1, 2]
    assert "(question id 101)" in failures.example_view(run, 1, "gprune", 0.5).markdown


def test_the_progress_bar_shows_the_whole_run_of_every_process(vqa_dataset, tmp_path):
    out = tmp_path / "progress"
    first = run_evaluate(vqa_dataset, out, *CHEAP, "--limit", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_evaluate(vqa_dataset, out, *CHEAP, "--limit", "5", processes=2, progress=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: 2 done, 3 left" in resumed.stderr
    counts = re.findall(r"evaluating \(2 processes\):.*?(\d+)/(\d+) \[", resumed.stderr)
    # Starts at the rows done before; ends at the whole run, though process 0 evaluated 2 of the 3 rows left.
    assert counts[0] == ("2", "5") and counts[-1] == ("5", "5"), resumed.stderr[-3000:]
    assert set(pq.read_table(out / "results.parquet")["process"].to_pylist()) == {0, 1}


def test_workers_end_when_their_launcher_is_killed(vqa_dataset, tmp_path):
    out, log = tmp_path / "orphans", tmp_path / "log.txt"
    with open(log, "wb") as output:
        launcher = subprocess.Popen(evaluate_command(vqa_dataset, out, *CHEAP, "--shard-size", "1", processes=2),
                                    cwd=ROOT, env=environment(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    workers: set[int] = set()
    try:
        # No deadline: the run is finite, so the loop ends once it has started or with the run (which then fails).
        while not ((out / "run.json").exists() and len(workers) >= 3):  # torchrun's agent and its two workers
            assert launcher.poll() is None, log.read_text()[-3000:]
            workers |= descendants(launcher.pid)
            time.sleep(0.05)
        os.kill(launcher.pid, signal.SIGKILL)  # the launcher only: torchrun's workers have sessions of their own
        launcher.wait()
        deadline = time.monotonic() + 600  # a hang guard, not a speed limit
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(pid) for pid in workers), log.read_text()[-3000:]
        assert not (out / "results.parquet").exists()  # they ended with it, not after finishing the run
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_the_kernel_a_thread_ends_a_worker_whose_parent_died(tmp_path):
    """The portable fallback of `end_with_launcher`: a parent that is killed, its child's watch thread exits."""
    worker = ("import os, threading, time; from gprune.evaluate.launch import _exit_when_orphaned; "
              "threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start(); "
              "print('watching', flush=True); time.sleep(600)")
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(600)"
    launcher = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                                start_new_session=True)
    children: set[int] = set()
    try:
        assert launcher.stdout.readline() == b"watching\n"  # the worker's thread runs
        children = descendants(launcher.pid)
        assert len(children) == 1
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 600  # a hang guard, not a speed limit
        while any(running(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(running(pid) for pid in children)
    finally:
        for pid in children:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.stdout.close()


@pytest.mark.parametrize("options, message", [
    (["--keep-ratios", "0.5,3"], "--keep-ratios must be"),
    (["--methods", "gprune,magic"], "methods must be a non-empty subset"),
    (["--columns", "picture=img"], "unknown column role 'picture'"),
    (["--limit", "0"], "--limit must be a whole number >= 1"),
    (["--fastv-layer", "0"], "--fastv-layer"),
])
def test_bad_options_give_one_error_line(options, message, vqa_dataset, tmp_path, capsys):
    assert main(["--model", "tiny", "--dataset", str(vqa_dataset), "--out", str(tmp_path / "x"), *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no dataset at" in capsys.readouterr().err
