"""A tiny OpenAI-compatible judge server with deterministic verdicts, run as a real process by the judge tests.

``python judge_server.py PORT`` serves ``/v1/models`` (one model, ``toy-judge``) and
``/v1/completions`` and ``/v1/chat/completions`` (the prompt as the last user message): it reads ``Gold answer:`` and ``Proposed answer:`` from the prompt and
replies `` yes`` when a gold alias occurs in the proposed answer as whole words (knowtune's
``contains`` rule, so a judged audit must equal a ``--match contains`` one), `` maybe`` for a
proposed answer ``perhaps`` and `` no`` otherwise. ``GET /count`` says how many completions and chat completions it served.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "toy-judge"
_served = 0
_chats = 0
_lock = threading.Lock()


def verdict(prompt: str) -> str:
    from knowtune.matching import MatchConfig, is_correct

    fields = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
    gold, answer = fields.get("Gold answer", ""), fields.get("Proposed answer", "")
    if answer == "perhaps":
        return " maybe"
    return " yes" if is_correct(answer, gold.split(" / "), MatchConfig(method="contains")) else " no"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"data": [{"id": MODEL}]})
        elif self.path == "/count":
            self._json(200, {"completions": _served, "chat": _chats})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        global _served, _chats
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/v1/chat/completions"
        if not (chat or self.path == "/v1/completions") or body.get("model") != MODEL or chat != ("messages" in body):
            self._json(404, {"error": f"no {self.path} for {body.get('model')}"})
            return
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with _lock:
            _served += not chat
            _chats += chat
        text = verdict(prompt)[: 4 * body.get("max_tokens", 4)]
        choice = {"index": 0, "message": {"role": "assistant", "content": text.strip()}} if chat else {"index": 0, "text": text}
        self._json(200, {"choices": [choice], "usage": {"prompt_tokens": len(prompt.split())}})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
