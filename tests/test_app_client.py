"""The running app through its public API: `python app.py` (tiny model) driven with gradio_client."""

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import synthetic_image

FAST = dict(max_new_tokens=4, iterations=3, fastv_layer=1)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    paths = {}
    for name, size, seed in (("wide", (640, 480), 0), ("tall", (300, 500), 1)):
        paths[name] = folder / f"{name}.png"
        synthetic_image(*size, seed=seed).save(paths[name])
    paths["corrupt"] = folder / "corrupt.png"
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    paths["text"] = folder / "notes.jpg"
    paths["text"].write_text("this is not an image")
    return paths


def analyze(client: Client, path, question="What is in the image?", keep_ratio=0.5, **settings):
    options = {**FAST, **settings}
    return client.predict(handle_file(str(path)), question, keep_ratio=keep_ratio, api_name="/analyze", **options)


@pytest.fixture(scope="module")
def analysed(app_server, image_files):
    """One client with a finished analysis of the wide image; also records the first-analyze latency."""
    client = Client(app_server, verbose=False)
    start = time.perf_counter()
    outputs = analyze(client, image_files["wide"], keep_ratio=0.25)
    print(f"\nfirst /analyze round trip: {time.perf_counter() - start:.2f} s")
    return client, outputs


def test_analyze_returns_pictures_and_summary(analysed):
    _, (heatmap, mask, gallery, answers_html, summary) = analysed
    assert summary["image_size"] == [640, 480]
    assert summary["random_weights"] is True and summary["model"] == "tiny"
    assert summary["config"]["keep_ratio"] == 0.25 and summary["config"]["iterations"] == 3
    assert list(summary["results"]) == ["gprune", "fastv", "tome", "l2norm", "random"]
    kept = {r["tokens_after"] for r in summary["results"].values()}
    assert len(kept) == 1  # every method at the same budget
    with Image.open(heatmap) as picture:
        assert picture.size == (640, 480)
    assert len(gallery) == 5 and gallery[2]["caption"].startswith("ToMe")
    assert "<b>Unpruned</b>" in answers_html and "<b>G-Prune</b>" in answers_html
    assert "FLOPs at LLaVA-NeXT-7B shapes" in answers_html and "not measured" in answers_html  # the toy model


def test_step_redraws_from_stored_scores(analysed):
    client, (final_heatmap, _, _, _, _) = analysed
    first, _, caption = client.predict("grid", 0, api_name="/step")
    assert "Iteration 0 of 3" in caption
    last, _, _ = client.predict("grid", 3, api_name="/step")
    assert np.array_equal(np.asarray(Image.open(last)), np.asarray(Image.open(final_heatmap)))
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(last)))
    timings = []
    for t in (0, 1, 2, 3) * 3:
        start = time.perf_counter()
        client.predict("base", t, api_name="/step")
        timings.append(time.perf_counter() - start)
    print(f"\n/step round trip (incl. downloading 2 images): median {np.median(timings) * 1e3:.0f} ms")
    with pytest.raises(Exception, match="iteration must be a whole number from 0 to 3"):
        client.predict("grid", 7, api_name="/step")


def test_inspect_a_token(analysed):
    client, _ = analysed
    highlight, trace, info = client.predict("grid", 320, 240, api_name="/inspect")
    assert "**Token" in info and "Degree" in info and "ToMe:" in info
    assert Image.open(trace).size[0] > 100
    with pytest.raises(Exception, match="outside"):
        client.predict("grid", 5000, 10, api_name="/inspect")


def test_difference_and_gif(analysed):
    client, _ = analysed
    picture, counts = client.predict("gprune", "random", "grid", api_name="/difference")
    assert "G-Prune only" in counts and "Random only" in counts
    gif = client.predict("grid", api_name="/gif")
    with Image.open(gif) as animation:
        assert animation.format == "GIF"


def test_export_zip(analysed):
    client, _ = analysed
    path = client.predict(api_name="/export")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert {"summary.json", "tokens.npz", "config.json", "answers.json", "input.png"} <= set(names)
        # Per view: G-Prune's scores and kept mask, score and similarity histograms, 5 method slides; + input.png.
        assert sum(name.endswith(".png") for name in names) == 2 * (4 + 5) + 1
        summary = json.loads(archive.read("summary.json"))
        assert summary["config"]["keep_ratio"] == 0.25 and summary["image_size"] == [640, 480]
        with np.load(io.BytesIO(archive.read("tokens.npz"))) as arrays:
            assert arrays["gprune_scores"].shape[0] == 4


def test_measure_timings_asks_for_timing_rounds(app_server, image_files):
    client = Client(app_server, verbose=False)
    summary = analyze(client, image_files["tall"], methods=["l2norm"], measure_timings=True)[4]
    assert summary["config"]["timing_rounds"] == 3
    assert analyze(client, image_files["tall"], methods=["l2norm"])[4]["config"]["timing_rounds"] == 0
    with pytest.raises(Exception, match="Measure timings must be true or false"):
        analyze(client, image_files["tall"], methods=["l2norm"], measure_timings="yes")


def test_sweep(analysed):
    client, _ = analysed
    plot, curves = client.predict("1, 0.5", api_name="/sweep")
    assert curves["keep_ratios"] == [1.0, 0.5]
    assert set(curves["curves"]) == {"unpruned", "gprune", "fastv", "tome", "l2norm", "random"}
    # Keeping every token is the unpruned prompt for the pre-LLM methods.
    assert curves["curves"]["gprune"][0] == pytest.approx(curves["curves"]["unpruned"][0], abs=1e-3)
    with pytest.raises(Exception, match="keep ratios"):
        client.predict("1, 2", api_name="/sweep")


def test_bad_inputs_give_clear_errors_and_the_server_keeps_serving(app_server, image_files):
    client = Client(app_server, verbose=False)
    for name in ("corrupt", "text"):
        with pytest.raises(Exception, match="cannot be used.*could not be decoded as an image"):
            analyze(client, image_files[name])
    with pytest.raises(Exception, match="Run an analysis first"):
        client.predict("grid", 0, api_name="/step")
    with pytest.raises(Exception, match="shorten it to at most 500"):
        analyze(client, image_files["wide"], question="why? " * 120)
    with pytest.raises(Exception, match="Type a question"):
        analyze(client, image_files["wide"], question="   ")
    with pytest.raises(Exception, match="methods must be a non-empty subset"):
        analyze(client, image_files["wide"], methods=[])
    _, _, _, _, summary = analyze(client, image_files["tall"], methods=["l2norm"])
    assert summary["image_size"] == [300, 500] and list(summary["results"]) == ["l2norm"]
    with pytest.raises(Exception, match="G-Prune was not among the methods"):
        client.predict("grid", 0, api_name="/step")


def test_two_sessions_do_not_see_each_other(app_server, image_files):
    jobs = {"wide": (image_files["wide"], 0.5, [640, 480]), "tall": (image_files["tall"], 0.1, [300, 500])}
    seen, errors = {}, []

    def work(name):
        try:
            client = Client(app_server, verbose=False)
            path, ratio, _ = jobs[name]
            summary = analyze(client, path, keep_ratio=ratio)[4]
            export = client.predict(api_name="/export")
            with zipfile.ZipFile(export) as archive:
                exported = json.loads(archive.read("summary.json"))
            caption = client.predict("grid", 3, api_name="/step")[2]
            seen[name] = (summary, exported, caption)
        except Exception as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for name, (_, ratio, size) in jobs.items():
        summary, exported, caption = seen[name]
        assert summary["image_size"] == size and summary["config"]["keep_ratio"] == ratio
        assert exported["image_size"] == size and exported["config"]["keep_ratio"] == ratio
        grid_tokens = summary["grid"]["rows"] * summary["grid"]["cols"]
        assert f"of {grid_tokens:,} tokens" in caption
