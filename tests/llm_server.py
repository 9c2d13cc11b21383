"""A real, scripted OpenAI-compatible chat-completions server for tests and benchmarks (loopback only).

    python tests/llm_server.py --port N --script script.json [--latency-ms 200]

Prints ``LISTENING <port>`` once ready. ``GET /stats`` returns the server's own counts (requests,
replies by kind, max requests in flight, bearer tokens seen, response formats), so tests check request
counts from the server side. Script (JSON):

    {"latency_ms": 0,                      # added to every reply
     "reject_formats": ["json_schema"],    # answer 400 to these response_format types, as vLLM words it
     "models": ["test-model"],             # GET /v1/models lists these; absent: /v1/models answers 404
     "require_key": "sk-...",              # every endpoint answers 401 to another bearer token
     "default": {"kind": "auto"},          # reply when no rule matches
     "rules": [{"match": 'Target name: "spleen"', "replies": [SPEC, SPEC, ...]}]}

A request matching a rule's substring (in its messages) takes that rule's next reply; once a rule's
replies are used up the default applies. SPEC kinds: auto (a valid reply built from the prompt; varies
with the seed; a judge request (`vgmed-build judge`) gets a verdict read from the request: no image ->
not_answerable, boxes named but no red box pixel in the attached PNG -> wrong_target, else ok),
json (``content`` object, "{obj}" filled in), text (raw ``content``), refusal,
status (``status``, optional ``retry_after`` and ``message``; ``echo_auth`` echoes the API key in the
error), reject_format (400 "response_format ... is not supported" when the request asks json_schema,
else an auto reply). Options on any of them: ``delay_ms`` (a slow reply), ``drip_ms`` (the body is
sent one byte every drip_ms after the headers, as a stalled stream), ``usage`` (this JSON value
replaces the reply's usage object: negative counts, strings, a list, null), ``think`` (the content is
preceded by ``<think>THINK</think>``, as reasoning models answer; ``"think_open": true`` leaves the
block unclosed).

The batch service (OpenAI's files + batches API): ``POST /v1/files`` (multipart upload, purpose
batch), ``GET /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches``,
``GET /v1/batches/{id}``. A batch answers each input line with the same scripted replies as a live
request (``response.status_code`` 200 or the scripted error status). Script keys: ``batch_polls``
(retrieves a batch answers ``in_progress`` before it completes, default 1) and
``batch_create_delay_ms`` (the batch exists at once but the create call answers late: a client
killed meanwhile never learns its id). Counts in ``/stats`` also: ``models_requests``, ``unauthorized`` (401s sent),
``formats`` (chat requests by response_format type, "none" without one), ``files_uploaded``, ``batches_created``,
``batch_lines`` (requests answered through batches), ``batch_retrieves``, ``file_downloads``.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
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
    "Would you say this image shows the {obj}?",  # "the": right for any name, "grey matter" included
    "Is the {obj} visible here?",
    "Does the image include the {obj}?",
]


class State:
    def __init__(self, script: dict):
        self.script = script
        self.lock = threading.RLock()  # run_batch picks replies while holding it
        self.rule_pos = [0] * len(script.get("rules", []))
        self.stats = {
            "requests": 0,
            "by_kind": {},
            "in_flight": 0,
            "max_in_flight": 0,
            "bearer_tokens": [],
            "json_schema_requests": 0,
            "formats": {},
            "models_requests": 0,
            "unauthorized": 0,
            "image_requests": 0,
            "recent_prompts": [],
            "seeds": [],
            "files_uploaded": 0,
            "batches_created": 0,
            "batch_lines": 0,
            "batch_retrieves": 0,
            "file_downloads": 0,
        }
        self.files: dict[str, dict] = {}  # id -> {"meta": file object, "content": bytes}
        self.batches: dict[str, dict] = {}  # id -> batch object (+ "_polls")

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


def target_of(text: str) -> str:
    """The target name as the prompt gives it: a JSON string (quoted data), or the rest of the line."""
    target = re.search(r"^Target (?:name|object): (.+)", text, re.MULTILINE)  # a field is a line of its own
    if not target:
        return "structure"
    value = target.group(1).strip()
    if value.startswith('"'):
        return json.JSONDecoder().raw_decode(value)[0]
    return value


def _red_pixels(messages: list) -> int | None:
    """Pure red pixels (the drawn boxes) in the request's attached PNG; None without an image."""
    import base64
    import io

    from PIL import Image

    for m in messages:
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
            if url.startswith("data:image/png;base64,"):
                with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
                    rgb = img.convert("RGB")
                return sum(1 for p in rgb.getdata() if p == (255, 0, 0))
    return None


def judge_reply(text: str, messages: list) -> dict:
    """The judge's verdict, from the request alone: no image -> not_answerable; a draft with boxes whose
    image shows no red box -> wrong_target; else ok."""
    red = _red_pixels(messages)
    if red is None:
        return {"verdict": "not_answerable", "reason": "no image was attached"}
    if "Boxes (x0, y0, x1, y1" in text and "pixels): none" not in text and red == 0:
        return {"verdict": "wrong_target", "reason": "no box is drawn on the image"}
    return {"verdict": "ok", "reason": f"the boxed {target_of(text)} is visible ({red} box pixels)"}


def auto_reply(text: str, seed: int, messages: list | None = None) -> dict:
    obj = target_of(text)
    if text.startswith("You check drafted questions") or "\nDraft to judge\n" in text:
        return judge_reply(text, messages or [])
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


def completion(body: dict, text: str, seed: int, spec: dict, kind: str, n: int) -> dict | None:
    """The chat.completion body of a scripted reply (None for an unknown kind)."""
    obj = target_of(text)
    refusal = None
    if kind in ("auto", "reject_format"):
        content = json.dumps(auto_reply(text, seed, body.get("messages", [])))
    elif kind == "json":
        content = json.dumps(_fill(spec["content"], obj))
    elif kind == "text":
        content = _fill(spec["content"], obj)
    elif kind == "refusal":
        content, refusal = None, spec.get("content", "I can't help with that.")
    else:
        return None
    if content is not None and "think" in spec:
        content = f"<think>{_fill(spec['think'], obj)}" + ("" if spec.get("think_open") else "</think>\n" + content)
    prompt_tokens = len(text) // 4 + 1
    completion_tokens = len(content or refusal) // 4 + 1
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content,
                                                               "refusal": refusal}}
        ],
        "usage": spec["usage"] if "usage" in spec else usage,
    }


def new_file(state: State, filename: str, purpose: str, content: bytes) -> dict:
    fid = f"file-{len(state.files) + 1:04d}"
    meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed"}
    state.files[fid] = {"meta": meta, "content": content}
    return meta


def run_batch(state: State, batch: dict) -> None:
    """Answer every line of the batch's input file (under the state lock), as live requests are answered."""
    out, failed = [], 0
    for i, line in enumerate(state.files[batch["input_file_id"]]["content"].decode().splitlines()):
        request = json.loads(line)
        body = request["body"]
        text = _text_of(body.get("messages", []))
        spec = state.pick(text)
        kind = spec.get("kind", "auto")
        state.stats["batch_lines"] += 1
        state.stats["by_kind"][kind] = state.stats["by_kind"].get(kind, 0) + 1
        if kind == "status":
            status, reply = spec["status"], {"error": {"message": spec.get("message", "scripted error")}}
            failed += 1
        else:
            status, reply = 200, completion(body, text, int(body.get("seed") or 0), spec, kind, i)
        out.append({"id": f"batch_req_{i}", "custom_id": request["custom_id"], "error": None,
                    "response": {"status_code": status, "request_id": f"req_{i}", "body": reply}})
    content = "".join(json.dumps(o) + "\n" for o in out).encode()
    batch["output_file_id"] = new_file(state, f"{batch['id']}_output.jsonl", "batch_output", content)["id"]
    batch["status"] = "completed"
    batch["request_counts"] = {"total": len(out), "completed": len(out) - failed, "failed": failed}


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
        # client's delayed ACK (~40 ms), which real servers do not add.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None, drip_ms: float = 0) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not drip_ms:
                    self.wfile.write(data)
                for i in range(len(data) if drip_ms else 0):  # a stalled stream: one byte at a time
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(drip_ms / 1000.0)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): expected in the slow-reply tests

        def _unauthorized(self) -> bool:
            """Answer 401, as a server started with an API key does, unless the bearer token is that key."""
            key = state.script.get("require_key")
            if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                return False
            with state.lock:
                state.stats["unauthorized"] += 1
            self._send(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error",
                                       "code": "invalid_api_key"}})
            return True

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/stats":
                with state.lock:
                    self._send(200, state.stats)
            elif self._unauthorized():
                pass
            elif self.path.rstrip("/").endswith("/models") and "models" in state.script:
                with state.lock:
                    state.stats["models_requests"] += 1
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "scripted"}
                    for m in state.script["models"]]})
            elif not self._batch_get():
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self._unauthorized():
                return
            if self.path.rstrip("/").endswith("/files"):
                self._upload(raw)
                return
            body = json.loads(raw or b"{}")
            if self.path.rstrip("/").endswith("/batches"):
                self._create_batch(body)
                return
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            text = _text_of(body.get("messages", []))
            seed = int(body.get("seed") or 0)
            fmt = (body.get("response_format") or {}).get("type") or "none"
            json_schema = fmt == "json_schema"
            rejected = state.script.get("reject_formats", [])
            spec = state.pick(text)
            kind = spec.get("kind", "auto")
            with state.lock:
                s = state.stats
                s["requests"] += 1
                s["in_flight"] += 1
                s["max_in_flight"] = max(s["max_in_flight"], s["in_flight"])
                s["json_schema_requests"] += int(json_schema)
                s["formats"][fmt] = s["formats"].get(fmt, 0) + 1
                s["image_requests"] += int('"image_url"' in json.dumps(body.get("messages", [])))
                s["seeds"].append(seed)
                s["recent_prompts"] = (s["recent_prompts"] + [text])[-100:]
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if token and token not in s["bearer_tokens"]:
                    s["bearer_tokens"].append(token)
            try:
                time.sleep((state.script.get("latency_ms", 0) + spec.get("delay_ms", 0)) / 1000.0)
                if fmt in rejected or (kind == "reject_format" and json_schema):
                    kind = "reject_format"
                    self._send(
                        400,
                        {
                            "error": {
                                "message": f"response_format {fmt} is not supported by this server",
                                "type": "BadRequestError",
                                "param": None,
                                "code": 400,
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
            reply = completion(body, text, seed, spec, kind, state.stats["requests"])
            if reply is None:
                self._send(500, {"error": {"message": f"unknown scripted kind {kind}"}})
            else:
                self._send(200, reply, drip_ms=spec.get("drip_ms", 0))

        # --- the batch service ------------------------------------------------------------------
        def _batch_get(self) -> bool:
            path = self.path.split("?", 1)[0].rstrip("/")
            m = re.fullmatch(r".*/files/([^/]+)/content", path)
            with state.lock:
                if m and m.group(1) in state.files:
                    state.stats["file_downloads"] += 1
                    data = state.files[m.group(1)]["content"]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return True
                if path.endswith("/files"):
                    self._send(200, {"object": "list", "has_more": False,
                                     "data": [f["meta"] for f in state.files.values()]})
                    return True
                if path.endswith("/batches"):
                    self._send(200, {"object": "list", "has_more": False,
                                     "data": [_public(b) for b in state.batches.values()]})
                    return True
                m = re.fullmatch(r".*/batches/([^/]+)", path)
                if m and m.group(1) in state.batches:
                    state.stats["batch_retrieves"] += 1
                    batch = state.batches[m.group(1)]
                    batch["_polls"] += 1
                    if batch["status"] == "in_progress" and batch["_polls"] > state.script.get("batch_polls", 1):
                        run_batch(state, batch)
                    self._send(200, _public(batch))
                    return True
            return False

        def _upload(self, raw: bytes) -> None:
            message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
            )
            fields, content, filename = {}, b"", "upload"
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if name == "file":
                    content, filename = part.get_payload(decode=True), part.get_filename() or filename
                else:
                    fields[name] = part.get_content().strip()
            with state.lock:
                state.stats["files_uploaded"] += 1
                meta = new_file(state, filename, fields.get("purpose", "batch"), content)
            self._send(200, meta)

        def _create_batch(self, body: dict) -> None:
            with state.lock:
                if body.get("input_file_id") not in state.files:
                    self._send(404, {"error": {"message": f"no file {body.get('input_file_id')}"}})
                    return
                state.stats["batches_created"] += 1
                bid = f"batch_{len(state.batches) + 1:04d}"
                n = len(state.files[body["input_file_id"]]["content"].splitlines())
                state.batches[bid] = {
                    "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                    "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                    "status": "in_progress", "output_file_id": None, "error_file_id": None,
                    "created_at": int(time.time()), "metadata": body.get("metadata"),
                    "request_counts": {"total": n, "completed": 0, "failed": 0}, "_polls": 0,
                }
                reply = _public(state.batches[bid])
            time.sleep(state.script.get("batch_create_delay_ms", 0) / 1000.0)
            self._send(200, reply)

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
