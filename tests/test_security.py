"""Security checks against the running app (`python app.py`, tiny model) and its source.

Upload size cap, no server file reachable through the file routes or as an "upload", no `trust_remote_code`,
no endpoint that takes a model id, and no secret from the environment in the server's output.
"""

import http.client
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import SECRET_CANARY
from api_helpers import QUESTION, analyze, encoded, noise, raw_call, raw_upload

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


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "assets" / "astronaut.jpg"), str(ROOT / "app.py"),
                                  "../../etc/passwd", "https://example.com/picture.png"])
def test_a_server_path_is_not_accepted_as_an_upload(app_server, small_png, path):
    """The image input takes only files uploaded through the app, not a path on the server."""
    image = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "picture.png"}
    event, data = raw_call(app_server, "analyze", [image, QUESTION, 0.5, 0.5, 0.03, 3, 1, ["gprune"], 2, "grid", False])
    assert event == "error"
    assert "root:" not in json.dumps(data) and "image_size" not in json.dumps(data)
    uploaded = raw_upload(app_server, small_png)  # an actual upload, sent the same way, works
    event, data = raw_call(app_server, "analyze", [uploaded, QUESTION, 0.5, 0.5, 0.03, 3, 1, ["gprune"], 2, "grid", False])
    assert event == "complete" and data[-1]["image_size"] == [64, 48]


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
                                     "fastv_layer", "methods", "max_new_tokens", "view", "measure_timings"]
        assert not [name for params in names.values() for name in params if MODEL_LIKE.search(name)], names


def test_extra_arguments_do_not_change_the_model(app_server, small_png):
    client = Client(app_server, verbose=False)
    with pytest.raises(TypeError, match="model"):
        client.predict(handle_file(str(small_png)), QUESTION, api_name="/analyze", model="llava-hf/llava-v1.6-mistral-7b-hf")
    hub_id = "llava-hf/llava-v1.6-mistral-7b-hf"
    uploaded = raw_upload(app_server, small_png)
    event, data = raw_call(app_server, "analyze",
                           [uploaded, QUESTION, 0.5, 0.5, 0.03, 3, 1, ["gprune"], 2, "grid", False, hub_id, {"model": hub_id}])
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
