"""A real, scripted OpenAI-compatible chat-completions server for tests and benchmarks (loopback only).

    python tests/llm_server.py --port N --script script.json [--latency-ms 200]

Prints ``LISTENING <port>`` once ready. ``GET /stats`` returns the server's own counts (requests,
replies by kind, max requests in flight, bearer tokens seen, response formats), so tests check request
counts from the server side. Script (JSON):

    {"latency_ms": 0,                      # added to every reply
     "reject_json_schema": false,          # answer 400 to response_format json_schema (fallback test)
     "default": {"kind": "auto"},          # reply when no rule matches
     "rules": [{"match": "Target name: spleen", "replies": [SPEC, SPEC, ...]}]}

A request matching a rule's substring (in its messages) takes that rule's next reply; once a rule's
replies are used up the default applies. SPEC kinds: auto (a valid reply built from the prompt; varies
with the seed), json (``content`` object, "{obj}" filled in), text (raw ``content``), refusal,
status (``status``, optional ``retry_after``; ``echo_auth`` echoes the API key in the error),
plus ``delay_ms`` on any of them (a slow reply).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ATTRIBUTE = [
    ("What is the margin of the {obj} like?", "smooth", "margin"),
    ("What is the texture of the {obj} in this image?", "homogeneous", "texture"),
    ("How bright does the {obj} appear in this image?", "hypodense", "intensity"),
    ("What contour does the {obj} have?", "lobulated", "shape"),
]
_PARAPHRASE = [
    "Would you say this image contains a {obj}?",
    "Is any {obj} visible here?",
    "Does the image include a {obj}?",
]


class State:
    def __init__(self, script: dict):
        self.script = script
        self.lock = threading.Lock()
        self.rule_pos = [0] * len(script.get("rules", []))
        self.stats = {
            "requests": 0,
            "by_kind": {},
            "in_flight": 0,
            "max_in_flight": 0,
            "bearer_tokens": [],
            "json_schema_requests": 0,
            "image_requests": 0,
            "recent_prompts": [],
            "seeds": [],
        }

    def pick(self, text: str) -> dict:
        with self.lock:
            for i, rule in enumerate(self.script.get("rules", [])):
                if rule["match"] in text and self.rule_pos[i] < len(rule["replies"]):
                    self.rule_pos[i] += 1
                    return rule["replies"][self.rule_pos[i] - 1]
        return self.script.get("default", {"kind": "auto"})


def _text_of(messages: list) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)


def auto_reply(text: str, seed: int) -> dict:
    target = re.search(r"Target name: (.+)", text)
    obj = target.group(1).strip() if target else "structure"
    if "Question to rephrase:" in text:
        return {"question": _PARAPHRASE[seed % len(_PARAPHRASE)].format(obj=obj)}
    q, a, kind = _ATTRIBUTE[seed % len(_ATTRIBUTE)]
    return {"question": q.format(obj=obj), "answer": a, "attribute": kind}


def _fill(value, obj: str):
    if isinstance(value, str):
        return value.replace("{obj}", obj)
    if isinstance(value, dict):
        return {k: _fill(v, obj) for k, v in value.items()}
    return value


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
        # client's delayed ACK (~40 ms), which real servers do not add.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): expected in the slow-reply tests

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                with state.lock:
                    self._send(200, state.stats)
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            text = _text_of(body.get("messages", []))
            seed = int(body.get("seed") or 0)
            json_schema = (body.get("response_format") or {}).get("type") == "json_schema"
            spec = state.pick(text)
            kind = spec.get("kind", "auto")
            with state.lock:
                s = state.stats
                s["requests"] += 1
                s["in_flight"] += 1
                s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
                s["json_schema_requests"] += int(json_schema)
                s["image_requests"] += int('"image_url"' in json.dumps(body.get("messages", [])))
                s["seeds"].append(seed)
                s["recent_prompts"] = (s["recent_prompts"] + [text])[-100:]
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if token and token not in s["bearer_tokens"]:
                    s["bearer_tokens"].append(token)
            try:
                time.sleep((state.script.get("latency_ms", 0) + spec.get("delay_ms", 0)) / 1000.0)
                if json_schema and state.script.get("reject_json_schema"):
                    kind = "reject_json_schema"
                    self._send(
                        400,
                        {
                            "error": {
                                "message": "response_format json_schema is not supported",
                                "type": "invalid_request_error",
                            }
                        },
                    )
                elif kind == "status":
                    headers = {"Retry-After": str(spec["retry_after"])} if "retry_after" in spec else {}
                    message = spec.get("message", "scripted error")
                    if spec.get("echo_auth"):  # a careless server echoing the credentials back
                        message += f" (Authorization: {self.headers.get('Authorization')})"
                    self._send(spec["status"], {"error": {"message": message}}, headers)
                else:
                    self._complete(body, text, seed, spec, kind)
            finally:
                with state.lock:
                    state.stats["in_flight"] -= 1
                    state.stats["by_kind"][kind] = state.stats["by_kind"].get(kind, 0) + 1

        def _complete(self, body: dict, text: str, seed: int, spec: dict, kind: str) -> None:
            target = re.search(r"Target name: (.+)", text)
            obj = target.group(1).strip() if target else "structure"
            refusal = None
            if kind == "auto":
                content = json.dumps(auto_reply(text, seed))
            elif kind == "json":
                content = json.dumps(_fill(spec["content"], obj))
            elif kind == "text":
                content = _fill(spec["content"], obj)
            elif kind == "refusal":
                content, refusal = None, spec.get("content", "I can't help with that.")
            else:
                self._send(500, {"error": {"message": f"unknown scripted kind {kind}"}})
                return
            prompt_tokens = len(text) // 4 + 1
            completion_tokens = len(content or refusal) // 4 + 1
            self._send(
                200,
                {
                    "id": f"chatcmpl-{state.stats['requests']}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "test"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content, "refusal": refusal},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
            )

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the benchmark opens dozens of connections at once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = any free port)")
    ap.add_argument("--script", default=None, help="JSON script file (default: valid auto replies)")
    ap.add_argument(
        "--latency-ms", type=float, default=None, help="added latency per reply (overrides script)"
    )
    args = ap.parse_args()
    script = json.load(open(args.script)) if args.script else {}
    if args.latency_ms is not None:
        script["latency_ms"] = args.latency_ms
    server = Server(("127.0.0.1", args.port), make_handler(State(script)))
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
