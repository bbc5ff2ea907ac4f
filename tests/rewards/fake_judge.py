"""A local OpenAI-compatible chat-completions judge server for the reward tests and benchmark.

The fake judge runs on 127.0.0.1 (random port) in a thread and speaks the real protocol
(``POST /v1/chat/completions``). Its behaviour is chosen by markers in the user message, so one
batch can mix healthy and failing samples:

    MODE:slow        sleep SLOW_S before answering (beyond the client's timeout)
    MODE:500once     HTTP 500 the first time this exact request is seen, then a normal answer
    MODE:500always   HTTP 500 every time
    MODE:garbage     HTTP 200, a chat completion whose content is prose, not the asked format
    MODE:notjson     HTTP 200 with an HTML body (not a chat completion at all)
    MODE:401         HTTP 401 (not retryable)

A normal extraction answer is the JSON written after ``CLAIMS:`` in the text; a normal
consistency answer is TRUE unless the text contains ``INCONSISTENT``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = 5.0


class FakeJudge:
    """Server state visible to tests: request log, per-body counts, peak concurrency per model name.

    Concurrency is tracked per model name because slow requests of an earlier test may still be
    sleeping in the server after their client gave up.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.seen: Counter = Counter()
        self.in_flight: Counter = Counter()
        self.peak_in_flight: Counter = Counter()
        self.delay_s = 0.0

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()
            self.peak_in_flight.clear()
            self.delay_s = 0.0

    def count(self, marker: str) -> int:
        """Requests received whose user message contains ``marker``."""
        with self.lock:
            return sum(marker in r["user"] for r in self.requests)


def _answer(system: str, user: str) -> str:
    if "extract temporal claims" in system:
        marker = user.find("CLAIMS:")
        if marker < 0:
            return "{}"
        return user[marker + len("CLAIMS:") :].splitlines()[0].strip()
    return "FALSE\nThe answer contradicts the reasoning." if "INCONSISTENT" in user else "TRUE\nConsistent."


def _make_handler(state: FakeJudge):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): expected in the slow mode

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.loads(raw)
            system = body["messages"][0]["content"]
            user = body["messages"][1]["content"]
            with state.lock:
                state.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "model": body["model"], "user": user}
                )
                state.seen[raw] += 1
                first_time = state.seen[raw] == 1
                model = body["model"]
                state.in_flight[model] += 1
                state.peak_in_flight[model] = max(state.peak_in_flight[model], state.in_flight[model])
            try:
                if state.delay_s:
                    time.sleep(state.delay_s)
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "not found"}}')
                elif "MODE:slow" in user:
                    time.sleep(SLOW_S)
                    self._send(200, _completion(body["model"], _answer(system, user)))
                elif "MODE:500always" in user or ("MODE:500once" in user and first_time):
                    self._send(500, b'{"error": {"message": "internal error"}}')
                elif "MODE:401" in user:
                    self._send(401, b'{"error": {"message": "invalid api key"}}')
                elif "MODE:garbage" in user:
                    self._send(200, _completion(body["model"], "Well, I think the video is about cooking."))
                elif "MODE:notjson" in user:
                    self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                else:
                    self._send(200, _completion(body["model"], _answer(system, user)))
            finally:
                with state.lock:
                    state.in_flight[model] -= 1

    return Handler


def _completion(model: str, content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) drops connections of a concurrent batch; the client's SYN
    # retry then takes a second and looks like a judge timeout
    request_queue_size = 256
    daemon_threads = True


def start_fake_judge() -> tuple[ThreadingHTTPServer, str, FakeJudge]:
    """Start a fake judge on a random 127.0.0.1 port: (server, base_url, state).

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    state = FakeJudge()
    server = _Server(("127.0.0.1", 0), _make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", state
