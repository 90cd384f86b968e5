"""Latency of the running app as a client sees it: `/analyze`, the iteration step `/step`, and `/analyze` of a
shipped example with its default settings (served from its precomputed bundle: what an example click costs).

    python -m bench.app_latency                 # starts `python app.py --model tiny` on a free port
    python -m bench.app_latency --model auto    # whatever the app would load (7B on CUDA)
    python -m bench.app_latency --url http://127.0.0.1:7860   # an app that is already running

The app is started as a subprocess with `GRADIO_SERVER_PORT` set to a free port; once it answers HTTP,
a `gradio_client.Client` (one session, so `/step` sees the analysis that `/analyze` stored) makes
`--calls` rounds of: one `/analyze` (a synthetic 640×480 image, 2,340 visual tokens, the default
question and settings) then one `/step` (iteration t = round mod (I + 1)), each started on a quiet
machine and re-run if other processes (not the app server) took > 10 % of the CPUs meanwhile (see
bench.common.Quiet; `--no-quiet` turns that off). Times are wall-clock around
`Client.predict`, output files downloaded as a browser would. p50 / p95 are linear-interpolated
percentiles of the calls after one warm-up round; the app's start-up time (process start → first HTTP
answer) is reported too. The subprocess is stopped by its own pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .common import Quiet, machine, machine_line, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ITERATIONS = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None, timeout: float, log_path: Path | None) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text()[-4000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"app.py exited with code {process.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status < 500:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def endpoint_parameters(client, api_name: str) -> list[dict]:
    api = client.view_api(print_info=False, return_format="dict")
    endpoints = api.get("named_endpoints", {})
    if api_name not in endpoints:
        raise RuntimeError(f"the app has no {api_name} endpoint; it exposes {sorted(endpoints)}")
    return endpoints[api_name]["parameters"]


def step_kwargs(parameters: list[dict], iteration: int) -> dict:
    """Keyword arguments of `/step`: the parameter named `iteration` set, the others at their defaults."""
    names = [p["parameter_name"] for p in parameters]
    if "iteration" not in names:
        raise RuntimeError(f"/step has no 'iteration' parameter (parameters: {names})")
    return {"iteration": iteration}


def percentiles(samples: list[float]) -> dict:
    values = np.asarray(samples, dtype=np.float64)
    return {"calls": int(values.size), "p50_s": float(np.percentile(values, 50)),
            "p95_s": float(np.percentile(values, 95)), "mean_s": float(values.mean()),
            "min_s": float(values.min()), "max_s": float(values.max())}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.app_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20, help="timed rounds (one /analyze + one /step each)")
    parser.add_argument("--step-calls-per-round", type=int, default=1)
    parser.add_argument("--model", default="tiny", help="passed to app.py --model")
    parser.add_argument("--url", help="measure an app that is already running instead of starting one")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--question", default="What is in the image?")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-quiet", action="store_true", help="time every call as it comes (no waiting for a quiet machine)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from gradio_client import Client, handle_file

    from .models import synthetic_image

    if args.url is None and not (ROOT / "app.py").exists():
        print("app latency benchmark skipped: app.py does not exist yet")
        return 0
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr, flush=True)
    process = None
    with tempfile.TemporaryDirectory(prefix="gprune-app-bench-") as tmp:
        tmp = Path(tmp)
        image_path = tmp / "image_640x480.png"
        synthetic_image(640, 480).save(image_path)
        log_path = tmp / "app.log"
        if args.url:
            url, startup = args.url.rstrip("/") + "/", None
        else:
            port = free_port()
            url = f"http://127.0.0.1:{port}/"
            env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
                   "GRADIO_SERVER_NAME": "127.0.0.1"}
            log = open(log_path, "w")
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "app.py", "--model", args.model], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
            print(f"started app.py (pid {process.pid}) on port {port} …", file=sys.stderr, flush=True)
        try:
            if process is not None:
                wait_until_up(url, process, args.startup_timeout, log_path)
                startup = time.perf_counter() - started
            else:
                wait_until_up(url, None, 30.0, None)
            client = Client(url, verbose=False, download_files=str(tmp / "downloads"), analytics_enabled=False)
            step_parameters = endpoint_parameters(client, "/step")
            endpoint_parameters(client, "/analyze")
            example = json.loads((ROOT / "assets" / "examples.json").read_text())[0]
            analyze_times, step_times, example_times = [], [], []
            # The server's CPU time is part of the measurement, not "other processes".
            quiet = Quiet(enabled=not args.no_quiet and process is not None,
                          also_ours=(process.pid,) if process is not None else ())
            for round_index in range(-1, args.calls):  # round −1: warm-up
                analyze = lambda: client.predict(handle_file(str(image_path)), args.question, api_name="/analyze")  # noqa: E731
                if round_index < 0:
                    analyze()
                else:
                    analyze_times.append(quiet.run(analyze)[1])
                for k in range(args.step_calls_per_round):
                    iteration = (max(round_index, 0) * args.step_calls_per_round + k) % (DEFAULT_ITERATIONS + 1)
                    step = lambda: client.predict(**step_kwargs(step_parameters, iteration), api_name="/step")  # noqa: E731
                    if round_index < 0:
                        step()
                    else:
                        step_times.append(quiet.run(step)[1])
                open_example = lambda: client.predict(handle_file(str(ROOT / "assets" / example["file"])),  # noqa: E731
                                                      example["question"], api_name="/analyze")
                if round_index >= 0:
                    example_times.append(quiet.run(open_example)[1])
                if round_index >= 0 and (round_index + 1) % 5 == 0:
                    print(f"  {round_index + 1}/{args.calls} rounds", file=sys.stderr, flush=True)
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                log.close()

    results = {"/analyze": percentiles(analyze_times), "/step": percentiles(step_times),
               "/analyze (precomputed example)": percentiles(example_times)}
    quiet_text = quiet.summary()
    rows = [[name, r["calls"], f"{r['p50_s'] * 1e3:.0f}", f"{r['p95_s'] * 1e3:.0f}", f"{r['mean_s'] * 1e3:.0f}",
             f"{r['max_s'] * 1e3:.0f}"] for name, r in results.items()]
    app = f"`python app.py --model {args.model}`" if args.url is None else args.url
    startup_text = f"; start-up (process start → first HTTP answer) {startup:.1f} s" if startup is not None else ""
    lines = ["# App latency (gradio_client, one session)", "", f"Machine: {machine_line(info)}.", "",
             f"App: {app}{startup_text}.", "",
             f"Rounds of one /analyze (640×480 synthetic image, 2,340 visual tokens, all five methods, default "
             f"settings) then {args.step_calls_per_round} /step, then /analyze of the example `{example['file']}` with "
             f"its question (served from its bundle); {args.calls} timed rounds after one warm-up. "
             + quiet_text + " (The app server's own CPU time counts as the measurement's.)", "",
             markdown_table(["endpoint", "calls", "p50 ms", "p95 ms", "mean ms", "max ms"], rows)]
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "model": args.model, "url": args.url, "startup_s": startup, "calls": args.calls,
                "endpoints": results, "samples_s": {"/analyze": analyze_times, "/step": step_times,
                                                                   "/analyze (precomputed example)": example_times},
                "quiet": {"enabled": quiet.enabled, "calls": quiet.calls, "re_runs": quiet.retried}}
        for path in write_results("app_latency", data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
