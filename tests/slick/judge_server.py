"""A tiny OpenAI-compatible judge server with deterministic verdicts, run as a real process by the judge tests.

``python judge_server.py PORT`` serves ``/v1/models`` (one model, ``toy-judge``) and
``/v1/completions``: it reads ``Gold answer:`` and ``Proposed answer:`` from the prompt and
replies `` yes`` when a gold alias occurs in the proposed answer as whole words (knowtune's
``contains`` rule, so a judged audit must equal a ``--match contains`` one), `` maybe`` for a
proposed answer ``perhaps`` and `` no`` otherwise. ``GET /count`` says how many completions it served.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "toy-judge"
_served = 0
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
            self._json(200, {"completions": _served})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        global _served
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions" or body.get("model") != MODEL:
            self._json(404, {"error": f"no {self.path} for {body.get('model')}"})
            return
        with _lock:
            _served += 1
        text = verdict(body["prompt"])[: 4 * body.get("max_tokens", 4)]
        self._json(200, {"choices": [{"index": 0, "text": text}], "usage": {"prompt_tokens": len(body["prompt"].split())}})


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
