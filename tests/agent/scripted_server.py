"""A scripted OpenAI-compatible chat server (a real HTTP server on a real socket) for harness-logic tests.

It answers ``/v1/chat/completions`` with the next scripted reply (a string, or a function of the request's
messages) and records every request. It stands in for a model only where the test is about the harness's
own logic; integration with lagoon's engine is tested against ``lagoon serve`` itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = str | Callable[[list[dict]], str]


class ScriptedChatServer:
    def __init__(self, replies: list[Reply], delay_after: int | None = None, delay_s: float = 0.0):
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self.delay_after, self.delay_s = delay_after, delay_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.authorizations.append(self.headers.get("Authorization"))
                if server.delay_after is not None and len(server.requests) > server.delay_after:
                    time.sleep(server.delay_s)
                if not server.replies:
                    self._send(500, {"error": {"message": "script exhausted"}})
                    return
                reply = server.replies.pop(0)
                text = reply(body["messages"]) if callable(reply) else reply
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(text) // 4), "total_tokens": 10},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
