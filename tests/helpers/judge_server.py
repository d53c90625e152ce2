"""A small OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib ``http.server``, ephemeral
port) for tests of the LLM judge, with deterministic verdicts, token usage and injectable faults.

- a response containing the word GOOD beats one without; otherwise the longer response wins and
  equal lengths tie;
- a request whose prompt contains BIASED always prefers the response shown first (position bias);
- NOVERDICT in the prompt (or ``no_verdict`` set): every answer lacks a verdict; REASKOK: only the
  first ask lacks one;
- ``echo_key`` set: every answer starts by quoting the API key it was sent (an endpoint that leaks it);
- log-probs of the verdict token (when asked): (A, B, C, other) = (.54, .27, .09, .10) when the
  first shown response is the longer one, (.36, .45, .09, .10) when it is the shorter one;
- faults (429 with Retry-After 0.2 s, 500, a reply slower than the client's timeout, 401 for a
  wrong key) are injected on a schedule or by setting.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = 0.8  # the "slow" fault answers after this; tests that inject it use timeout_s=0.3
RETRY_AFTER_S = 0.2


# -- the fake endpoint -----------------------------------------------------------------------------
class FakeJudgeServer:
    """POST /v1/chat/completions with deterministic verdicts, token usage and injectable faults."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: deque[str] = deque()  # consumed one per request, in arrival order
        self.log: list[tuple[float, str]] = []  # (arrival time, fault or "ok") per request
        self.authorization: set[str] = set()
        self.prompt_tokens = self.completion_tokens = 0
        self.serve_logprobs = True
        self.require_key: str | None = None
        self.delay_s = 0.0
        self.no_verdict = False
        self.echo_key = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                server._handle(self)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.log)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one request --
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            fault = self.faults.popleft() if self.faults else "ok"
            self.log.append((time.monotonic(), fault))
            self.authorization.add(h.headers.get("Authorization", ""))
        if self.delay_s:
            time.sleep(self.delay_s)
        if h.path != "/v1/chat/completions":
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        if self.require_key and h.headers.get("Authorization") != f"Bearer {self.require_key}":
            return self._send(h, 401, {"error": {"message": "invalid api key"}})
        if fault == "429":
            return self._send(h, 429, {"error": {"message": "slow down"}}, {"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return self._send(h, 500, {"error": {"message": "internal error"}})
        if fault == "slow":
            time.sleep(SLOW_S)
        self._send(h, 200, self._completion(body, h.headers.get("Authorization", "")))

    def _send(self, h, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)

    @staticmethod
    def _parts(text: str) -> tuple[str, str, str]:
        def grab(tag: str) -> str:
            return re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1)

        return grab("request"), grab("response_a"), grab("response_b")

    @staticmethod
    def _verdict(prompt: str, first: str, second: str) -> str:
        if "BIASED" in prompt:
            return "A"
        if ("GOOD" in first) != ("GOOD" in second):
            return "A" if "GOOD" in first else "B"
        if len(first) == len(second):
            return "C"
        return "A" if len(first) > len(second) else "B"

    def _completion(self, body: dict, authorization: str) -> dict:
        messages = body["messages"]
        prompt, first, second = self._parts(messages[0]["content"])
        verdict = self._verdict(prompt, first, second)
        if self.no_verdict or "NOVERDICT" in prompt or ("REASKOK" in prompt and len(messages) == 1):
            tokens = ["I", " cannot", " decide", "."]
        elif len(messages) > 1:  # the re-ask
            tokens = ["[[", verdict, "]]"]
        else:
            tokens = ["Response", f" {verdict}", " reads", " better", ".\n", "[[", verdict, "]]"]
        if self.echo_key:
            tokens = [f"You sent {authorization.removeprefix('Bearer ')}. ", *tokens]
        text = "".join(tokens)
        logprobs = None
        if body.get("logprobs") and self.serve_logprobs:
            first_longer = len(first) > len(second)
            mass = dict(zip("ABC?", (0.54, 0.27, 0.09, 0.10) if first_longer else (0.36, 0.45, 0.09, 0.10)))
            verdict_at = len(tokens) - 2
            content = []
            for i, tok in enumerate(tokens):
                alts = [{"token": x, "logprob": math.log(p)} for x, p in mass.items()] if i == verdict_at else []
                alts = alts or [{"token": tok, "logprob": 0.0}]
                content.append({"token": tok, "logprob": 0.0, "top_logprobs": alts})
            logprobs = {"content": content}
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        with self.lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += len(tokens)
        return {
            "id": "cmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        }
