"""Memory a session's stored results cost the running app, and what requests that store nothing cost.

    python -m bench.session_memory              # 12 retained sessions of a 640×480 run, 400 refused calls
    python -m bench.session_memory --quick      # 4 sessions, 100 calls; writes nothing

Starts `python app.py --model tiny` on a free port (results kept 2 h, cap 64, so nothing is dropped) and
measures the server's resident set size (psutil) side by side in one run:

1. after two warm-up sessions (lazy allocations, Gradio's caches);
2. after `--sessions` more sessions (one `gradio_client.Client` each) each ran `/analyze` on the synthetic
   640×480 image (2,340 visual tokens, all five methods, default settings) and redrew every iteration with
   `/step` (which fills the session's kept-set caches, as the browser's slider does);
3. after `--refused` raw `/call/step` requests from fresh session ids, each refused (no results).

RSS per retained session = (2 − 1) / sessions; per refused request = (3 − 2) / refused. Beside it, the bytes
`app_sessions.stored_bytes` counts for the same analysis made in this process (what the store's byte bound
charges), so the two can be compared. The server runs with `MALLOC_ARENA_MAX=2`, as Spaces' images do not;
without it glibc's per-thread arenas add noise of tens of MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from .app_latency import free_port, wait_until_up
from .common import machine, machine_line, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]


def stored_bytes_of_one_run(image) -> int:
    sys.path.insert(0, str(ROOT))
    import app_views as views
    from app_sessions import stored_bytes
    from gprune import AnalysisConfig, analyze, load_model

    session = views.new_session(analyze(load_model("tiny"), image, "What is in the image?", AnalysisConfig()))
    for iteration in range(session.analysis.config.iterations + 1):
        views.iteration_pictures(session, "grid", iteration)
    return stored_bytes(session)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.session_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--refused", type=int, default=400)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.refused, args.no_write = 4, 100, True
    import httpx
    from gradio_client import Client, handle_file

    from .models import synthetic_image

    info = machine()
    image = synthetic_image(640, 480)
    with tempfile.TemporaryDirectory(prefix="gprune-session-bench-") as tmp:
        tmp = Path(tmp)
        image_path = tmp / "image_640x480.png"
        image.save(image_path)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
               "GRADIO_SERVER_NAME": "127.0.0.1", "GPRUNE_MAX_SESSIONS": "64", "MALLOC_ARENA_MAX": "2"}
        env.pop("GPRUNE_SESSION_TTL_S", None)
        log_path = tmp / "app.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "app.py", "--model", "tiny"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
            try:
                wait_until_up(url, process, 600.0, log_path)
                server = psutil.Process(process.pid)

                def run_session():
                    client = Client(url, verbose=False, download_files=str(tmp / "downloads"))
                    client.predict(handle_file(str(image_path)), "What is in the image?", api_name="/analyze")
                    for iteration in range(6):
                        client.predict("grid", iteration, api_name="/step")
                    return client

                clients = [run_session() for _ in range(2)]  # warm-up
                rss = [server.memory_info().rss]
                clients += [run_session() for _ in range(args.sessions)]
                rss.append(server.memory_info().rss)
                for index in range(args.refused):
                    body = {"data": ["grid", 0], "session_hash": f"refused-{index}"}
                    event = httpx.post(f"{url}gradio_api/call/step", json=body, timeout=60).json()["event_id"]
                    httpx.get(f"{url}gradio_api/call/step/{event}", timeout=60)
                rss.append(server.memory_info().rss)
            finally:
                process.terminate()
                process.wait(timeout=60)
    counted = stored_bytes_of_one_run(image)
    per_session = (rss[1] - rss[0]) / args.sessions
    per_refused = (rss[2] - rss[1]) / args.refused
    rows = [["server RSS after warm-up", f"{rss[0] / 2**20:,.0f} MB"],
            [f"+ {args.sessions} retained sessions", f"{(rss[1] - rss[0]) / 2**20:+,.1f} MB = "
                                                     f"{per_session / 2**20:,.1f} MB per session"],
            ["stored_bytes of one such session (what the byte bound charges)", f"{counted / 2**20:,.1f} MB"],
            [f"+ {args.refused} refused /step calls from fresh ids", f"{(rss[2] - rss[1]) / 2**20:+,.1f} MB = "
                                                                    f"{per_refused / 2**10:,.1f} kB per call"]]
    markdown = "\n".join(["# Session memory (`python app.py --model tiny`)", "", f"Machine: {machine_line(info)}.", "",
                          "640×480 synthetic image (2,340 visual tokens), all five methods, default settings; each "
                          "session also stepped through every iteration.", "",
                          markdown_table(["measured", "value"], rows)])
    print(markdown)
    if not args.no_write:
        data = {"machine": info, "sessions": args.sessions, "refused": args.refused, "rss_bytes": rss,
                "rss_per_session_bytes": per_session, "stored_bytes_per_session": counted,
                "rss_per_refused_call_bytes": per_refused}
        for path in write_results("session_memory", data, markdown):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
