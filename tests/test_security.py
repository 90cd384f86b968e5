"""Security checks against the running app (`python app.py`, tiny model) and its source.

Upload size cap, no server file reachable through the file routes or as an "upload", no `trust_remote_code`,
no endpoint that takes a model id, and no secret from the environment in the server's output.
"""

import base64
import json
import http.client
import io
import os
import re
import socket
import stat
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from PIL import Image
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import PLANTED, PLANTED_FILE, PLANTED_TARGET, SECRET_CANARY
from api_helpers import (QUESTION, analyze, encoded, fn_index, noise, queue_run, raw_call, raw_post, raw_result,
                         raw_upload)

ROOT = Path(__file__).resolve().parent.parent
CAP_BYTES = 20 * 1024 * 1024  # app.MAX_UPLOAD_SIZE = "20mb"
APP_SOURCE_MARKERS = (b"def analyze_image", b"def build_demo", b"import gradio")


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("security") / "small.png"
    path.write_bytes(encoded(noise(), "PNG"))
    return path


def padded_png(path: Path, size: int) -> Path:
    """A valid 64×48 PNG followed by zero bytes up to `size` (decoders stop at IEND)."""
    data = encoded(noise(), "PNG")
    path.write_bytes(data + bytes(size - len(data)))
    return path


# ------------------------------------------------------------------------------------------ upload cap


def test_uploads_above_the_cap_are_refused(app_server, small_png, tmp_path):
    over = padded_png(tmp_path / "over.png", CAP_BYTES + 1024)
    client = Client(app_server, verbose=False)
    # gradio_client reads the cap from the app's config and refuses before sending ...
    with pytest.raises(Exception, match=f"exceeds the maximum file size of {CAP_BYTES} bytes"):
        analyze(client, over)
    # ... and the server refuses it too when a client does not check (a plain multipart POST).
    with open(over, "rb") as file:
        response = httpx.post(app_server.rstrip("/") + "/gradio_api/upload", files={"files": ("over.png", file, "image/png")},
                          timeout=60)
    assert response.status_code == 413
    assert f"File size exceeded maximum allowed size of {CAP_BYTES} bytes" in response.text
    # Just under the cap is accepted, and the server keeps serving.
    under = padded_png(tmp_path / "under.png", CAP_BYTES - 1024)
    assert analyze(client, under)[4]["image_size"] == [64, 48]


# ------------------------------------------------------------------------------------- file routes

TRAVERSALS = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=../../etc/passwd",
    "/gradio_api/file=../../../../../../../../etc/passwd",
    "/gradio_api/file=..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=%252e%252e%252fetc%252fpasswd",
    "/gradio_api/file=....//....//etc/passwd",
    "/gradio_api/file=/etc/passwd%00.png",
    "/gradio_api/file=/proc/self/environ",
    "/file=/etc/passwd",
    "/file=../../etc/passwd",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=app.py",
    "/gradio_api/file=./app.py",
    "/gradio_api/file=../app.py",
    "/gradio_api/file=assets/../app.py",
    f"/gradio_api/file={ROOT / 'app.py'}",
    f"/gradio_api/file={ROOT / 'assets' / '..' / 'app.py'}",
    f"/gradio_api/file={ROOT / 'gprune' / 'loading.py'}",
    f"/gradio_api/file={ROOT / 'assets' / 'examples.json'}",
    "/gradio_api/file=%2e%2e%2fapp.py",
    "/file=app.py",
    "/static/../../app.py",
    "/assets/../../app.py",
    "/gradio_api/upload/../../app.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_file_routes_serve_no_server_file(app_server, path):
    # http.client sends the path byte for byte (httpx would normalise the dot segments away).
    address = urlsplit(app_server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in (403, 404), (response.status, body[:200])
    assert b"root:" not in body
    assert not any(marker in body for marker in APP_SOURCE_MARKERS)


def test_the_apps_own_outputs_are_served(app_server, small_png):
    """The positive control for the test above: files the app produced for this client download fine."""
    client = Client(app_server, verbose=False, download_files=False)
    heatmap = analyze(client, small_png)[0]
    response = httpx.get(heatmap["url"], timeout=30)
    assert response.status_code == 200 and response.content[:3] == b"\xff\xd8\xff"  # the JPEG heatmap


NOT_AN_UPLOAD = ("That upload cannot be used: only files uploaded to this app (or its examples) can be analysed; "
                 "upload the image file through the app and send the path the upload returns.")
SERVER_PATHS = [  # existing and missing files, images and not, relative, a folder, a NUL byte, URLs
    "/etc/passwd", "/etc/no-such-file.png", str(ROOT / "assets" / "astronaut.jpg"), str(ROOT / "app.py"),
    "../../etc/passwd", "assets/astronaut.jpg", str(ROOT / "assets"), "/proc/self/environ", "/etc/passwd\x00.png",
    "https://example.com/picture.png", "file:///etc/passwd",
]
QUICK_ARGS = [QUESTION, 0.5, 0.5, 0.03, 3, 1, ["gprune"], 2, "grid", "template", False]


@pytest.mark.parametrize("meta", [True, False], ids=["with-meta", "without-meta"])
def test_only_uploads_are_opened(app_process, small_png, tmp_path, meta):
    """A path that Gradio did not receive as an upload gets one message whatever it names (no existence oracle).

    With `meta` Gradio checks the path first; without it the payload reached the app unchecked and a server image
    was analysed (and returned by /export). A symlink planted in the upload folder is resolved, so it does not
    help either.
    """
    planted = app_process.log_path.parent / "gradio" / f"planted-{meta}.jpg"
    planted.symlink_to(ROOT / "assets" / "astronaut.jpg")
    replies = set()
    for path in [*SERVER_PATHS, str(planted)]:
        image = {"path": path, "orig_name": "picture.png", **({"meta": {"_type": "gradio.FileData"}} if meta else {})}
        event, data = raw_call(app_process.url, "analyze", [image, *QUICK_ARGS])
        assert event == "error", path
        replies.add(data["error"])
    assert replies == {NOT_AN_UPLOAD}
    event, data = raw_call(app_process.url, "analyze", [{"url": "https://example.com/picture.png"}, *QUICK_ARGS])
    assert (event, data["error"]) == ("error", NOT_AN_UPLOAD)
    uploaded = raw_upload(app_process.url, small_png)  # an actual upload, sent the same way, works
    event, data = raw_call(app_process.url, "analyze", [uploaded, *QUICK_ARGS])
    assert event == "complete" and data[-1]["image_size"] == [64, 48]
    # So does an example, as the browser sends it after a click (Gradio cached the app's assets at start-up).
    config = httpx.get(app_process.url.rstrip("/") + "/config", timeout=30).json()
    example = next(c for c in config["components"] if c["type"] == "dataset")["props"]["samples"][0][0]
    event, data = raw_call(app_process.url, "analyze", [example, *QUICK_ARGS])
    assert event == "complete" and data[-1]["question"] == QUESTION


def test_a_data_url_image_is_decoded_by_the_app(app_server, small_png):
    url = "data:image/png;base64," + base64.b64encode(small_png.read_bytes()).decode()
    event, data = raw_call(app_server, "analyze", [{"url": url}, *QUICK_ARGS])
    assert event == "complete" and data[-1]["image_size"] == [64, 48]
    event, data = raw_call(app_server, "analyze", [{"url": "data:image/png;base64,@@not base64@@"}, *QUICK_ARGS])
    assert event == "error" and data["error"].startswith("That upload cannot be used: the data URL is not valid base64")
    event, data = raw_call(app_server, "analyze", [{"path": 5}, *QUICK_ARGS])  # not even a path
    assert (event, data["error"]) == ("error", "An input is malformed (path: Input should be a valid string).")


# ------------------------------------------------------------------------------------------- the model

SOURCES = sorted([ROOT / "app.py", ROOT / "app_views.py", *(ROOT / "gprune").glob("*.py")])


def test_no_trust_remote_code_anywhere():
    assert len(SOURCES) > 5
    enabled = re.compile(r"""trust_remote_code["']?\s*[=:]\s*(True|1|["']?true)""", re.IGNORECASE)
    for source in SOURCES:
        text = source.read_text()
        assert not enabled.search(text), f"{source.name} enables trust_remote_code"


# Whole words of a parameter name (max_new_tokens is fine; model, model_id, hf_token, repo_path are not).
MODEL_LIKE = re.compile(r"(^|_)(model|checkpoint|ckpt|path|repo|hub|revision|weights|url|token|dir|file|id)(_|$)",
                        re.IGNORECASE)


def test_no_endpoint_takes_a_model_id(app_server):
    info = Client(app_server, verbose=False).view_api(return_format="dict", print_info=False)
    served = httpx.get(app_server.rstrip("/") + "/gradio_api/info", timeout=30).json()
    for endpoints in (info, served):
        names = {endpoint: [p["parameter_name"] for p in spec["parameters"]]
                 for kind in ("named_endpoints", "unnamed_endpoints") for endpoint, spec in endpoints[kind].items()}
        assert set(names) == {"/analyze", "/step", "/difference", "/inspect", "/gif", "/export", "/sweep"}
        assert names["/analyze"] == ["image", "question", "keep_ratio", "threshold", "temperature", "iterations",
                                     "fastv_layer", "methods", "max_new_tokens", "view", "system_prompt",
                                     "measure_timings"]
        assert not [name for params in names.values() for name in params if MODEL_LIKE.search(name)], names


def test_extra_arguments_do_not_change_the_model(app_server, small_png):
    client = Client(app_server, verbose=False)
    with pytest.raises(TypeError, match="model"):
        client.predict(handle_file(str(small_png)), QUESTION, api_name="/analyze", model="llava-hf/llava-v1.6-mistral-7b-hf")
    hub_id = "llava-hf/llava-v1.6-mistral-7b-hf"
    uploaded = raw_upload(app_server, small_png)
    event, data = raw_call(app_server, "analyze",
                           [uploaded, QUESTION, 0.5, 0.5, 0.03, 3, 1, ["gprune"], 2, "grid", "template", False, hub_id,
                            {"model": hub_id}])
    assert event == "complete"
    assert data[-1]["model"] == "tiny" and data[-1]["random_weights"] is True
    with pytest.raises(AppError, match="Unknown method"):
        analyze(client, small_png, methods=[hub_id])


# ------------------------------------------------------------------------------------------- secrets


def test_no_secret_reaches_the_output_or_the_pages(limits_app, small_png):
    """`limits_app` runs with HF_TOKEN set to a canary; nothing it prints or serves may contain it."""
    client = Client(limits_app.url, verbose=False)
    analyze(client, small_png, methods=["gprune", "tome"])
    with pytest.raises(AppError):
        analyze(client, small_png, keep_ratio=5)  # an error path too (tracebacks are printed)
    base = limits_app.url.rstrip("/")
    for page in ("/", "/config", "/gradio_api/info", "/gradio_api/info?all_endpoints=true"):
        assert SECRET_CANARY not in httpx.get(base + page, timeout=30).text, page
    log = limits_app.log()
    assert "Running on local URL" in log  # the output is captured (PYTHONUNBUFFERED=1)
    assert SECRET_CANARY not in log


# ----------------------------------------------------------------------------- client-chosen sizes

BAD_SESSION_ID = "session_hash must be 1 to 64 letters, digits, '-' or '_'"
TOO_LARGE = "Request body too large: at most 1,048,576 bytes"
# Measured: 100 calls with a 900 kB session id grow the server by 0–3 MB now (each is refused before Gradio
# keeps it); before, Gradio kept every one (~400 MB for 100 calls with 4 MB ids).
SESSION_ID_RSS_BOUND_MB = 30


def test_client_chosen_session_ids_and_bodies_are_bounded(app_process):
    base = app_process.url.rstrip("/") + "/gradio_api"
    server = psutil.Process(app_process.process.pid)
    before = server.memory_info().rss / 2**20
    for index in range(100):
        response = httpx.post(f"{base}/call/step", json={"data": ["grid", 1], "session_hash": f"{index}" * 300_000},
                              timeout=30)
        assert response.status_code == 400 and response.json()["detail"].startswith(BAD_SESSION_ID)
    growth = server.memory_info().rss / 2**20 - before
    print(f"\n100 calls with a ~900 kB session id: server RSS {growth:+.1f} MB")
    assert growth < SESSION_ID_RSS_BOUND_MB
    refused = {
        "4 MB id": httpx.post(f"{base}/call/step", json={"data": ["grid", 1], "session_hash": "x" * 4_000_000}),
        "65 characters": httpx.post(f"{base}/call/step", json={"data": ["grid", 1], "session_hash": "x" * 65}),
        "a slash": httpx.post(f"{base}/queue/join", json={"data": [], "fn_index": 0, "session_hash": "a/b"}),
        "a number": httpx.post(f"{base}/queue/join", json={"data": [], "fn_index": 0, "session_hash": 7}),
        "in the query": httpx.get(f"{base}/queue/data", params={"session_hash": "x" * 100}),
        "in the heartbeat path": httpx.get(f"{base}/heartbeat/{'x' * 100}"),
        "50 MB body": httpx.post(f"{base}/call/step", content=b" " * 50_000_000,
                                 headers={"content-type": "application/json"}, timeout=60),
        "2 MB body, no length": httpx.post(f"{base}/call/step", content=(b" " * 100_000 for _ in range(20)),
                                           headers={"content-type": "application/json"}, timeout=60),
        "nested JSON": httpx.post(f"{base}/call/step", content=b"[" * 100_000 + b"]" * 100_000,
                                  headers={"content-type": "application/json"}),
    }
    for case, response in refused.items():
        assert response.status_code in (400, 413), case
        assert response.json()["detail"].startswith((BAD_SESSION_ID, TOO_LARGE, "The request's JSON is nested")), case
    # The largest id accepted is 64 characters, and the session works as any other.
    event, data = raw_call(app_process.url, "step", ["grid", 1], session_hash="a" * 64)
    assert event == "error" and data["error"].startswith("Run an analysis first")


def multipart(parts: int, size: int):
    """A multipart upload body of `parts` files of `size` zero bytes, streamed (no Content-Length)."""
    for index in range(parts):
        yield (f'--cut\r\nContent-Disposition: form-data; name="files"; filename="f{index}.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(size // 1_000_000):
            yield bytes(1_000_000)
        yield b"\r\n"
    yield b"--cut--\r\n"


def upload_part_files(folder: Path) -> set[Path]:
    """The files Gradio's upload parser writes while a multipart body streams in (NamedTemporaryFile: tmp…)."""
    return {p for p in folder.iterdir() if p.is_file() and p.name.startswith("tmp")}


def wait_for_no_upload_parts(folder: Path, seconds: float) -> set[Path]:
    deadline = time.monotonic() + seconds
    while (parts := upload_part_files(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return parts


def test_upload_requests_are_capped_and_cut_uploads_leave_no_file(app_process):
    uploads = app_process.log_path.parent / "gradio"
    # Earlier tests' requests (on this shared server) may still be unwinding: start from a settled folder.
    assert not wait_for_no_upload_parts(uploads, 60), "part files of earlier uploads were never removed"
    url = app_process.url.rstrip("/") + "/gradio_api/upload"
    headers = {"content-type": "multipart/form-data; boundary=cut"}
    # Two files of 15 MB: each under the 20 MB cap, together over it; with and without a Content-Length.
    declared = httpx.post(url, content=b"".join(multipart(2, 15_000_000)), headers=headers, timeout=60)
    assert declared.status_code == 413 and "at most 21,037,056 bytes" in declared.json()["detail"]
    streamed = httpx.post(url, content=multipart(2, 15_000_000), headers=headers, timeout=60)
    assert streamed.status_code == 413 and "maximum allowed size of 21037056 bytes" in streamed.text
    # A client that disconnects halfway through its upload.
    address = urlsplit(app_process.url)
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                           b"boundary=cut\r\nContent-Length: 10000000\r\n\r\n" + next(multipart(1, 0)) + bytes(3_000_000))
    # Gradio writes upload parts to temporary files there; none may be left behind (the last request may still be
    # unwinding for a moment after the disconnect).
    assert not wait_for_no_upload_parts(uploads, 60)
    assert httpx.post(url, content=b"".join(multipart(1, 3_000_000)), headers=headers).status_code == 200


# --------------------------------------------------------------------------------- files on disk


def test_downloads_are_built_once_per_run_and_go_with_it(app_server, small_png):
    """/export and /gif build their file once per run: repeating them costs nothing and keeps one copy on disk,
    in a private folder of the session that the next run (or the session's expiry) deletes."""
    client = Client(app_server, verbose=False, download_files=False)
    analyze(client, small_png, methods=["gprune", "tome"])
    export = Path(client.predict(api_name="/export")["path"])
    built = export.stat()
    gif = Path(client.predict("grid", api_name="/gif")["path"])
    again = Path(client.predict(api_name="/export")["path"])
    assert again == export and (again.stat().st_ino, again.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert Path(client.predict("grid", api_name="/gif")["path"]) == gif
    folder = export.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([export.name, gif.name])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Each display setting (keep ratio, colour mode; set by the UI's private endpoints, which any client can call)
    # makes its own GIF and ZIP, but a new one replaces its slot's old one: one ZIP and a GIF per view at most.
    redraw, recolour = fn_index(app_server, "change_keep_ratio"), fn_index(app_server, "change_colour")
    for ratio, colour in ((0.3, "log"), (0.4, "linear"), (0.6, "rank"), (0.7, "log")):
        assert queue_run(app_server, redraw, ["grid", 3, ratio, "gprune", "tome"], client.session_hash)["success"]
        assert queue_run(app_server, recolour, ["grid", 3, colour], client.session_hash)["success"]
        newest = {Path(client.predict(view, api_name="/gif")["path"]).name for view in ("grid", "base")}
        newest.add(Path(client.predict(api_name="/export")["path"]).name)
        assert sorted(p.name for p in folder.iterdir()) == sorted(newest) and len(newest) == 3, (ratio, colour)
    # A sweep adds to the export, so the next export is built again, with it.
    client.predict("1, 0.5", api_name="/sweep")
    with zipfile.ZipFile(client.predict(api_name="/export")["path"]) as archive:
        assert "stability.json" in archive.namelist()
    # The next run replaces this one's downloads: they are deleted now, not an hour later.
    analyze(client, small_png)
    assert not folder.exists()
    assert Path(client.predict(api_name="/export")["path"]).parent != folder


def complete_picture(url: str) -> bool:
    """Whether `url` downloads as a whole, decodable picture (a truncated body is a protocol error or a bad JPEG)."""
    try:
        response = httpx.get(url, timeout=60)
        with Image.open(io.BytesIO(response.content)) as picture:
            picture.load()
        return response.status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def test_identical_outputs_of_concurrent_sessions_always_download_whole(app_server, tmp_path):
    """16 sessions draw the same pictures at the same moment and download them while the others write theirs.

    Gradio names a picture by its content, so the sessions share each file; it used to be rewritten in place by
    every session, and 8 of 190 downloads came back empty or truncated.
    """
    path = tmp_path / "same.png"
    path.write_bytes(encoded(noise(96, 96), "PNG"))
    barrier, bad, downloads = threading.Barrier(16), [], []

    def session():
        client = Client(app_server, verbose=False, download_files=False)
        barrier.wait(timeout=60)
        outputs = analyze(client, path, methods=["gprune", "l2norm", "random"])
        files = [outputs[0], outputs[1], *(item["image"] for item in outputs[2])]
        for iteration in range(4):
            files += client.predict("grid", iteration, api_name="/step")[:2]
        for file in files:
            downloads.append(file["url"])
            if not complete_picture(file["url"]):
                bad.append(file["url"])

    threads = [threading.Thread(target=session) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    print(f"\n{len(downloads)} downloads by 16 sessions with identical outputs, {len(bad)} incomplete")
    assert len(downloads) == 16 * 13 and not bad


def test_the_app_writes_only_to_private_folders_it_made(limits_app, small_png):
    """`limits_app` starts with its temp folder's fixed names (`PLANTED`) already symlinked to an attacker's
    folder, and no GRADIO_TEMP_DIR: the app followed the old fixed name, deleted the file there and wrote its
    downloads into it. Now every file goes into folders it made itself at start-up."""
    folder = limits_app.log_path.parent
    client = Client(limits_app.url, verbose=False, download_files=False)
    analyze(client, small_png)
    written = [Path(client.predict(api_name="/export")["path"]), Path(client.predict("grid", api_name="/gif")["path"]),
               Path(client.predict("grid", 1, api_name="/step")[0]["path"])]
    assert sorted(p.name for p in (folder / PLANTED_TARGET).iterdir()) == [PLANTED_FILE]
    assert all((folder / name).is_symlink() for name in PLANTED)
    for path in written:
        private = folder / path.resolve().relative_to(folder).parts[0]
        assert private.name.startswith("gprune-explorer-") and not private.is_symlink()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700


# ------------------------------------------------------------------------- one session, many calls

BUSY = "This session already has a call in progress: read its result"


def test_one_session_has_one_raw_call_in_flight(app_server, small_png):
    """Gradio hands a session's results to whichever raw /call stream of that session reads first: calls in flight
    together could swap results or leave a stream waiting. Now a second call is refused until the first's result
    has been read; then the session goes on as usual."""
    session = f"one-call-{os.getpid()}"
    event, _ = raw_call(app_server, "analyze", [raw_upload(app_server, small_png), *QUICK_ARGS], session)
    assert event == "complete"
    step = raw_post(app_server, "step", ["grid", 2], session)
    refused = [raw_post(app_server, "inspect", ["grid", 3, 3], session), raw_post(app_server, "export", [], session)]
    assert step.status_code == 200
    for response in refused:
        assert response.status_code == 409 and response.json()["detail"].startswith(BUSY)
    other = raw_call(app_server, "step", ["grid", 1], f"{session}-other")  # other sessions are not held up
    assert other[0] == "error" and other[1]["error"].startswith("Run an analysis first")
    event, data = raw_result(app_server, "step", step.json()["event_id"])
    assert event == "complete" and "Iteration 2 of 3" in data[2]
    event, data = raw_call(app_server, "inspect", ["grid", 3, 3], session)
    assert event == "complete" and data[2].startswith("**Token ")


def test_concurrent_calls_of_one_client_session_get_their_own_results(app_server, small_png):
    """gradio_client (like the browser) multiplexes one session's calls by event id; they may run together."""
    client = Client(app_server, verbose=False, download_files=False)
    analyze(client, small_png)
    steps = [client.submit("grid", iteration, api_name="/step") for iteration in range(4)]
    exports = [client.submit(api_name="/export") for _ in range(3)]
    for iteration, job in enumerate(steps):
        assert f"Iteration {iteration} of 3" in job.result(timeout=120)[2]
    assert len({job.result(timeout=120)["path"] for job in exports}) == 1  # built once, by whichever came first


# ------------------------------------------------------------------------------ quotas and unknown routes


def upload_from(address: str, url: str, data: bytes, upload_id: str | None = None) -> httpx.Response:
    """A multipart upload sent from the loopback `address` (each 127.x.y.z is another client to the server)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60) as http:
        return http.post(url.rstrip("/") + "/gradio_api/upload", params={"upload_id": upload_id} if upload_id else None,
                         files={"files": ("junk.png", data, "image/png")})


def test_uploads_have_a_quota_per_client_address(limits_app):
    """`limits_app` allows 3 MB per client address: a fourth 1 MB upload from one address is refused, with a
    message, while another address still uploads."""
    megabyte = encoded(noise(), "PNG") + bytes(2**20)
    for _ in range(2):
        assert upload_from("127.0.0.2", limits_app.url, megabyte).status_code == 200
    refused = upload_from("127.0.0.2", limits_app.url, megabyte)
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("Upload quota reached: 2 MB uploaded from your address in the last 2 h, "
                                               "at most 3 MB")
    assert upload_from("127.0.0.3", limits_app.url, megabyte).status_code == 200


def test_upload_ids_are_checked(app_server):
    data = encoded(noise(), "PNG")
    refused = upload_from("127.0.0.4", app_server, data, upload_id="u" * 65)
    assert refused.status_code == 400
    assert refused.json()["detail"] == ("upload_id must be 1 to 64 letters, digits, '-' or '_' (as Gradio's clients "
                                        "make them); got 65 characters.")
    assert upload_from("127.0.0.4", app_server, data, upload_id="abc123").status_code == 200
    progress = httpx.get(app_server.rstrip("/") + "/gradio_api/upload_progress", params={"upload_id": "x" * 100})
    assert progress.status_code == 400


UNKNOWN_ROUTES = [
    ("/gradio_api/call/nosuch", {"data": []}, 404, "There is no endpoint named 'nosuch'; the endpoints are /analyze, "
                                                    "/difference, /export, /gif, /inspect, /step, /sweep."),
    ("/gradio_api/call/0", {"data": []}, 404, "There is no endpoint named '0'"),
    ("/gradio_api/call/" + "n" * 3000, {"data": []}, 404, "(3,002 characters)"),
    ("/gradio_api/call/after_analyze", {"data": []}, 404, "There is no endpoint named 'after_analyze'"),
    ("/gradio_api/queue/join", {"data": [], "fn_index": 9999, "session_hash": "s1"}, 404,
     "fn_index 9999 names no function of this app; take the indices from /config (gradio_client does)."),
    ("/gradio_api/queue/join", {"data": [], "fn_index": -1, "session_hash": "s1"}, 404, "fn_index -1 names no function"),
    ("/gradio_api/queue/join", {"data": [], "fn_index": "7", "session_hash": "s1"}, 404, "fn_index '7' names no function"),
    ("/gradio_api/call/step", {"data": float("nan")}, 422, "data must be a list of the endpoint's inputs; got nan."),
    ("/gradio_api/call/step", {"data": {"view": "grid"}}, 422, "data must be a list of the endpoint's inputs; got {'view'"),
]


@pytest.mark.parametrize("path, body, status, detail", UNKNOWN_ROUTES, ids=[f"{i}" for i in range(len(UNKNOWN_ROUTES))])
def test_unknown_endpoints_and_malformed_calls_get_a_message_not_a_traceback(app_process, small_png, path, body,
                                                                             status, detail):
    before = app_process.log().count("Traceback")
    response = httpx.post(app_process.url.rstrip("/") + path, timeout=30,
                          content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert response.status_code == status and detail in response.json()["detail"]
    assert len(response.content) < 1000
    assert app_process.log().count("Traceback") == before
    analyze(Client(app_process.url, verbose=False), small_png)  # still serving


def test_several_byte_ranges_are_refused_with_a_message(app_server, small_png):
    client = Client(app_server, verbose=False, download_files=False)
    heatmap = analyze(client, small_png)[0]
    url = heatmap["url"]
    assert httpx.get(url, headers={"range": "bytes=0-9"}).status_code == 206
    refused = httpx.get(url, headers={"range": "bytes=0-1,3-4"})
    assert refused.status_code == 416
    assert refused.json()["detail"] == "Only one byte range per request is served; ask for the ranges one at a time."
