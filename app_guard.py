"""What stands between a client and the app's handlers: every refused request gets a message, the server log
stays short, and no client-chosen value can make the server hold unbounded memory.

* `RequestGuard`, an ASGI middleware in front of Gradio's routes: caps request bodies, accepts only session
  ids shaped like the ones Gradio's clients make, names unknown endpoints, caps the model's queue (one waiting
  Run per session, a few per client) and lets a session have one raw `/call` in flight.
* `GuardedBlocks`, the app's `gr.Blocks`: refuses a call with missing inputs by name or with a file that was
  not uploaded, logs a refused input as one line, and answers an unexpected failure with a reference to its
  logged traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import threading
import time
from collections import defaultdict, deque

import gradio as gr
import gradio.routes
import pydantic
from gradio_client.utils import is_file_obj, traverse
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

from app_inputs import shown, uploaded_file

# Gradio's browser client makes 11-character base-36 ids and gradio_client uuid4 strings. Gradio keys its
# queues and session states by whatever string a client sends; a 4 MB id cost 4 MB per call, kept.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_BODY_BYTES = 1 << 20  # API calls are JSON; files go through /upload (a data: URL image up to ~750 kB fits)
MULTIPART_OVERHEAD = 1 << 16  # boundary and part headers around the one file of an upload
MODEL_QUEUE = "gpu"  # the concurrency id of the events that call the model (Run, sweep)
UPLOAD_PROGRESS_KEPT_S = 60  # Gradio forgets an upload's progress only when a client read it to the end

log = logging.getLogger("gprune.app")
log.setLevel(logging.INFO)
log.propagate = False
_handler = logging.StreamHandler()
_handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
log.addHandler(_handler)


class Refused(Exception):
    """A request answered here, before Gradio sees it: HTTP `status` with `{"detail": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.response = JSONResponse({"detail": message}, status_code=status)


def check_session_id(value, name: str = "session_hash") -> None:
    if not (isinstance(value, str) and SESSION_ID.fullmatch(value)):
        size = f"{len(value):,} characters" if isinstance(value, str) else type(value).__name__
        raise Refused(400, f"{name} must be 1 to 64 letters, digits, '-' or '_' (as Gradio's clients make "
                           f"them); got {size}.")


class UploadQuota:
    """Bytes each client (by address) and all clients uploaded within the last `window_s` seconds, which is
    how long Gradio keeps uploads; `clock` is `time.monotonic` (tests pass their own)."""

    def __init__(self, per_client: int, total: int, window_s: float, clock=time.monotonic):
        self.per_client, self.total, self.window_s, self._clock = per_client, total, window_s, clock
        self._charges: deque[tuple[float, str, int]] = deque()  # (time, client, bytes), oldest first
        self._by_client: defaultdict[str, int] = defaultdict(int)
        self._sum = 0
        self._lock = threading.Lock()

    def check(self, client: str, nbytes: int) -> None:
        """Refuse an upload of `nbytes` that would take `client` (HTTP 429) or everyone (503) over the quota."""
        with self._lock:
            self._expire()
            used = self._by_client.get(client, 0)
            if used + nbytes > self.per_client:
                raise Refused(429, f"Upload quota reached: {used / 2**20:,.0f} MB uploaded from your address in the "
                                   f"last {self.window_s / 3600:g} h, at most {self.per_client / 2**20:,.0f} MB; "
                                   "analyse what you uploaded, or try again later.")
            if self._sum + nbytes > self.total:
                raise Refused(503, "This server has taken all the uploads it keeps for now; try again later.")

    def charge(self, client: str, nbytes: int) -> None:
        with self._lock:
            self._charges.append((self._clock(), client, nbytes))
            self._by_client[client] += nbytes
            self._sum += nbytes

    def _expire(self) -> None:
        oldest = self._clock() - self.window_s
        while self._charges and self._charges[0][0] < oldest:
            _, client, nbytes = self._charges.popleft()
            self._sum -= nbytes
            self._by_client[client] -= nbytes
            if not self._by_client[client]:
                del self._by_client[client]


class RequestGuard:
    """ASGI middleware (`launch(app_kwargs={"middleware": [...]})`) for every HTTP request.

    * Bodies: at most `MAX_BODY_BYTES`, except uploads (one file of at most `max_upload_bytes`, which Gradio
      checks per file); counted as they arrive, whatever Content-Length says (HTTP 413). An upload that is
      cut off, by the cap or by the client, leaves no partial file behind.
    * Session ids, in a JSON body, the query or the heartbeat path: `SESSION_ID` only (HTTP 400).
    * Raw `/call` API: Gradio sends a session's results to whichever `GET /call/…/{event_id}` stream of that
      session reads first, so two calls in flight in one session could swap results or leave one stream
      waiting forever. A `/call` for a session with an undelivered event is refused (HTTP 409) until its
      result is read. Browsers and gradio_client use `/queue/join`, whose stream is demultiplexed by event.
    """

    def __init__(self, app, blocks: gr.Blocks, max_upload_bytes: int, upload_quota: UploadQuota,
                 max_queued_runs: int = 16, max_queued_runs_per_client: int = 3):
        self.app, self.blocks = app, blocks
        self.max_upload_bytes, self.upload_quota = max_upload_bytes, upload_quota
        self.max_queued_runs, self.max_queued_runs_per_client = max_queued_runs, max_queued_runs_per_client
        self.calls_starting: set[str] = set()  # /call POSTs between this check and Gradio's queue

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            self.check_url(request)
            if scope["path"].endswith("/gradio_api/upload"):
                limit = self.max_upload_bytes + MULTIPART_OVERHEAD
                self.check_length(request, limit, "an upload carries one file of at most "
                                                  f"{self.max_upload_bytes:,} bytes")
                client = request.client.host if request.client else ""
                self.upload_quota.check(client, int(request.headers.get("content-length", "0")))
                stream = upload_stream(receive, limit, lambda size: self.upload_quota.charge(client, size))
                try:
                    await self.app(scope, stream, send)  # streamed to disk by Gradio
                finally:
                    forget_upload_progress(request.query_params.get("upload_id"), UPLOAD_PROGRESS_KEPT_S)
                return
            if scope["path"].endswith("/gradio_api/upload_progress"):
                try:
                    await self.app(scope, receive, send)
                finally:  # an id nobody uploaded under would stay in Gradio's dict of progress signals
                    forget_upload_progress(request.query_params.get("upload_id"), 0, only_untracked=True)
                return
            self.check_length(request, MAX_BODY_BYTES, "send images through /gradio_api/upload")
            body = await read_body(receive, MAX_BODY_BYTES)
            session = self.call_session(request, body)
        except Refused as refusal:
            await refusal.response(scope, receive, send)
            return
        if session is None:
            await self.app(scope, replay(body, receive), send)
            return
        self.calls_starting.add(session)
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self.calls_starting.discard(session)

    @staticmethod
    def check_length(request: Request, limit: int, hint: str) -> None:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            raise Refused(413, f"Request body too large: at most {limit:,} bytes ({hint}).")

    def check_url(self, request: Request) -> None:
        if "session_hash" in request.query_params:
            check_session_id(request.query_params["session_hash"])
        if "upload_id" in request.query_params:
            check_session_id(request.query_params["upload_id"], "upload_id")
        heartbeat = re.search(r"/gradio_api/heartbeat/([^/]*)$", request.url.path)
        if heartbeat:
            check_session_id(heartbeat[1])
        if "," in request.headers.get("range", ""):  # Starlette's file response fails on several ranges (HTTP 500)
            raise Refused(416, "Only one byte range per request is served; ask for the ranges one at a time.")
        called = re.search(r"/gradio_api/call/([^/]*)/?$", request.url.path)
        if called and request.method == "POST" and called[1] not in self.api_names():
            public = sorted(fn.api_name for fn in self.blocks.fns.values() if fn.api_visibility == "public")
            raise Refused(404, f"There is no endpoint named {shown(called[1], 60)}; the endpoints are "
                               f"{', '.join('/' + name for name in public)}.")

    def api_names(self) -> set[str]:
        """What `/call/<name>` may name: every endpoint that is not private (Gradio refuses the private ones)."""
        return {fn.api_name for fn in self.blocks.fns.values() if fn.api_name and fn.api_visibility != "private"}

    def call_session(self, request: Request, body: bytes) -> str | None:
        """Check the JSON body (its session id, its data, the function it names, the model queue); for a raw
        `/call`, return its session id (refused if the session is busy)."""
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return None  # not JSON: the route answers as it would
        except RecursionError:  # the routes' own parsing would fail the same way, with an unexplained 500
            raise Refused(400, "The request's JSON is nested too deeply.") from None
        if not isinstance(payload, dict) or request.method != "POST":
            return None
        if "data" in payload and not isinstance(payload["data"], list):  # e.g. NaN: Gradio's 422 cannot encode it
            raise Refused(422, f"data must be a list of the endpoint's inputs; got {shown(payload['data'])}.")
        session = payload.get("session_hash")
        if session is not None:
            check_session_id(session)
        fn = self.called_function(request, payload)
        if fn is not None and fn.concurrency_id == MODEL_QUEUE:
            self.check_model_queue(request, session)
        if session is None or "/gradio_api/call/" not in request.url.path:
            return None
        # Gradio's own record of a session's events whose result no stream has read yet.
        if session in self.calls_starting or self.blocks._queue.pending_event_ids_session.get(session):
            raise Refused(409, "This session already has a call in progress: read its result (GET "
                               "/gradio_api/call/<endpoint>/<event_id>) before sending its next call.")
        return session

    def called_function(self, request: Request, payload: dict):
        """The function a `/queue/join` (by `fn_index`) or `/call/<name>` runs, or None for other routes."""
        path = request.url.path
        if path.endswith("/gradio_api/queue/join"):
            index = payload.get("fn_index")
            fn = self.blocks.fns.get(index) if isinstance(index, int) and not isinstance(index, bool) else None
            if fn is None:
                raise Refused(404, f"fn_index {shown(index)} names no function of this app; take the indices "
                                   "from /config (gradio_client does).")
            return fn
        called = re.search(r"/gradio_api/call/([^/]*)/?$", path)
        if called:
            return next(fn for fn in self.blocks.fns.values() if fn.api_name == called[1])
        return None

    def check_model_queue(self, request: Request, session: str | None) -> None:
        """A Run (or sweep) waits in the model's queue: at most `max_queued_runs` there, one per session and
        `max_queued_runs_per_client` per client address (HTTP 429, or 503 when the queue is full)."""
        queue = self.blocks._queue.event_queue_per_concurrency_id.get(MODEL_QUEUE)
        waiting = list(queue.queue) if queue is not None else []
        client = request.client.host if request.client else None
        if session is not None and any(event.session_hash == session for event in waiting):
            raise Refused(429, "This session already has a Run waiting for the model; wait for its result first.")
        if sum(1 for event in waiting if event_client(event) == client) >= self.max_queued_runs_per_client:
            raise Refused(429, f"You have {self.max_queued_runs_per_client} Runs waiting for the model already; "
                               "wait for their results first.")
        if len(waiting) >= self.max_queued_runs:
            raise Refused(503, f"The model's queue is full ({len(waiting)} Runs waiting); try again in a minute.")


def event_client(event) -> str | None:
    client = getattr(event.request, "client", None)
    return client.host if client else None


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, refused once more than `limit` bytes arrived (Content-Length may be absent)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            raise Refused(413, f"Request body too large: at most {limit:,} bytes.")
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


def forget_upload_progress(upload_id: str | None, after_s: float, only_untracked: bool = False) -> None:
    """Drop Gradio's progress record of `upload_id` in `after_s` seconds (a progress stream reads it meanwhile)."""
    if not upload_id:
        return
    statuses = gradio.routes.file_upload_statuses

    def forget():
        if not only_untracked:
            statuses.stop_tracking(upload_id)
        if upload_id not in statuses._statuses:
            statuses._signals.pop(upload_id, None)

    asyncio.get_running_loop().call_later(after_s, forget)


def upload_stream(receive, limit: int, charge):
    """`receive` for Gradio's upload route that stops a body over `limit` bytes or cut off by the client, and
    `charge(size)`s each chunk's size to the client's upload quota.

    Both are raised as Gradio's own `MultiPartException`: its parser deletes the part files it has written for
    that exception only (a disconnect would leave them in the upload folder), and its route answers 413 for a
    message that says "maximum allowed size".
    """
    size = 0

    async def receive_upload():
        nonlocal size
        message = await receive()
        if message["type"] == "http.disconnect":
            raise MultiPartException("The upload was interrupted.")
        chunk = len(message.get("body", b""))
        size += chunk
        charge(chunk)
        if size > limit:
            raise MultiPartException(f"Request body exceeded maximum allowed size of {limit} bytes.")
        return message

    return receive_upload


def replay(body: bytes, receive):
    """`receive` for the app after the body was read here: the body once, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_replayed():
        return pending.pop() if pending else await receive()

    return receive_replayed


def endpoint(block_fn) -> str:
    return f"/{block_fn.api_name}" if block_fn.api_name else block_fn.name


class GuardedBlocks(gr.Blocks):
    """`gr.Blocks` whose failed calls all reach the client as a message, and the server log as one line
    (a refused input) or one traceback (a bug)."""

    def validate_inputs(self, block_fn, inputs):
        # Gradio's own check raises a ValueError, which reaches clients as {"error": null}.
        if len(inputs) < len(block_fn.inputs):
            names = [name for block, name in zip(block_fn.inputs, block_fn.input_parameter_names, strict=False)
                     if not block.skip_api]
            raise gr.Error(f"{endpoint(block_fn)} takes {len(names)} inputs ({', '.join(map(str, names))}); got "
                           f"{len(inputs)}. Send all of them, in that order (gradio_client fills in defaults).")
        super().validate_inputs(block_fn, inputs)

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        # Gradio copies every {"path": …} of a request into its cache before any component sees it (and
        # downloads URLs); its own check then fails with a message naming the path, or none. Only uploads pass.
        for value in inputs:
            traverse(value, lambda file: uploaded_file(file["path"]), is_file_obj)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except pydantic.ValidationError as error:  # a value of the wrong shape, e.g. an image {"path": 5}
            problem = error.errors()[0]
            where = ".".join(map(str, problem["loc"])) or "value"
            raise gr.Error(f"An input is malformed ({where}: {problem['msg']}).") from None

    async def process_api(self, block_fn, *args, **kwargs):
        name = endpoint(self.fns[block_fn] if isinstance(block_fn, int) else block_fn)
        try:
            return await super().process_api(block_fn, *args, **kwargs)
        except gr.Error as error:
            error.print_exception = False  # Gradio would print a 30-line traceback for a refused input
            log.info("refused %s: %s", name, shown(error.message, 300))
            raise
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("error %s in %s", reference, name)
            raise gr.Error(f"The server failed on this request (error {reference}, logged with its details). "
                           "Check the inputs and try again.", print_exception=False) from None
