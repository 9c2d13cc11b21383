"""Build catalogs holding real PNG images and schema-valid regions, for the generate tests and benchmark.

Regions are inserted through vgmed_build.catalog exactly as ingest stores them, so generate runs on the
same tables it meets after a real ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgmed_build.catalog import Catalog, now_iso, open_catalog
from vgmed_build.drafting.export import export_drafts
from vgmed_build.drafting.generate import GenerateOptions
from vgmed_build.drafting.llm import LlmConfig
from vgmed_build.identifiers import stable_id
from vgmed_build.resources import schema_errors

SERVER = Path(__file__).with_name("llm_server.py")

# (label, display_name, synonyms, side, category, box)
DEFAULT_TARGETS = [
    ("liver", "liver", ["hepatic parenchyma"], "right", "organ", [20, 30, 90, 100]),
    ("spleen", "spleen", [], "left", "organ", [100, 40, 120, 90]),
    ("kidney_left", "left kidney", [], "left", "organ", [90, 60, 110, 100]),
    ("gm", "grey matter", ["gray matter"], "bilateral", "tissue", [10, 10, 118, 118]),
    ("tumor", "tumour", ["tumor"], "unknown", "lesion", [50, 50, 60, 58]),
]


def make_catalog(
    build: Path, n_images: int = 1, targets=None, modality: str = "CT", source: str = "demo"
) -> Catalog:
    """A catalog with ``n_images`` 128x128 PNGs, each with one region per target."""
    targets = targets or DEFAULT_TARGETS
    cat = open_catalog(build)
    c = cat.conn  # raw SQL of the fixture, inside the catalog's transaction
    with cat.transaction():
        c.execute(
            "INSERT OR IGNORE INTO sources VALUES (?,?,?)", (source, "nifti", json.dumps({"name": source}))
        )
        for i in range(n_images):
            key = f"case{i:05d}.nii.gz"
            c.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, n_images, n_regions, finished_at) "
                "VALUES (?,?,?,?,?,?,?)",
                (source, key, "fp", "done", 1, len(targets), now_iso()),
            )
            image_id = stable_id(source, key, "0")
            rel = f"images/{image_id}.png"
            yy, xx = np.mgrid[0:128, 0:128]
            pixels = ((xx + yy + i) % 256).astype(np.uint8)
            Image.fromarray(pixels).save(build / rel)
            c.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?)",
                (image_id, source, key, rel, 128, 128, hashlib.sha256((build / rel).read_bytes()).hexdigest(), "{}"),
            )
            for label, display, synonyms, side, category, box in targets:
                x0, y0, x1, y1 = box
                region = {
                    "id": stable_id(image_id, label),
                    "image_id": image_id,
                    "image": rel,
                    "width": 128,
                    "height": 128,
                    "label": label,
                    "label_value": None,
                    "display_name": display,
                    "synonyms": synonyms,
                    "boxes": [box],
                    "area_ratio": (x1 - x0) * (y1 - y0) / 128 / 128,
                    "centroid": [(x0 + x1) / 2, (y0 + y1) / 2],
                    "side": side,
                    "modality": modality,
                    "body_part": "abdomen",
                    "category": category,
                    "plane": "axial",
                    "slice_index": 3,
                    "slice_position_mm": 12.5,
                    "pixel_spacing_mm": [1.0, 1.0],
                    "n_components": 1,
                    "source": {
                        "name": source,
                        "kind": "nifti",
                        "item": key,
                        "dataset": "demo",
                        "licence": "CC0",
                    },
                }
                assert not schema_errors("region", region), schema_errors("region", region)
                c.execute(
                    "INSERT INTO regions VALUES (?,?,?,?,?,?)",
                    (region["id"], image_id, source, label, modality, json.dumps(region)),
                )
    return cat


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlmServer:
    """The scripted OpenAI-compatible server (tests/llm_server.py) as a real separate process."""

    def __init__(self, script: dict, tmp: Path):
        self.script_path = tmp / f"script-{time.monotonic_ns()}.json"
        self.script_path.write_text(json.dumps(script))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--port", str(self.port), "--script", str(self.script_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"llm_server did not start: {line!r} {self.proc.stderr.read()}")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``vgmed-build ARGS`` in a subprocess (its own logging and exit code, as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "vgmed_build.cli", *args], capture_output=True, text=True, env=env)


# --- the LLM drafter against the scripted server (a pytest plugin: see conftest.py) ---------------

MODEL = "test-model"
EIGHT = [  # distinct targets, so every attribute prompt is distinct
    (f"organ{i}", name, [], side, "organ", [10 + 5 * i, 10, 40 + 5 * i, 50])
    for i, (name, side) in enumerate(
        [
            ("liver", "right"),
            ("spleen", "left"),
            ("pancreas", "midline"),
            ("stomach", "left"),
            ("gallbladder", "right"),
            ("aorta", "midline"),
            ("bladder", "midline"),
            ("duodenum", "right"),
        ]
    )
]


@pytest.fixture
def server_factory(tmp_path):
    """Start scripted servers (``server_factory(script)``); all are stopped after the test."""
    servers: list[LlmServer] = []

    def start(script: dict | None = None) -> LlmServer:
        servers.append(LlmServer(script or {}, tmp_path))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def opts(server: LlmServer, **kw) -> GenerateOptions:
    """LLM drafting options against ``server``; LlmConfig fields and GenerateOptions fields mixed."""
    llm_kw = {k: kw.pop(k) for k in list(kw) if k in LlmConfig.__dataclass_fields__}
    llm_kw = {"backoff_s": 0.05, "timeout_s": 10.0, "concurrency": 4, **llm_kw}
    llm = LlmConfig(model=MODEL, base_url=server.base_url, **llm_kw)
    return GenerateOptions(drafter="llm", progress=False, llm=llm, **kw)


def drafts_by_label(cat, q_type: str = "attribute") -> dict[str, dict]:
    """The drafts of one question type by their region's label."""
    return {d["label"]: d for d in export_drafts(cat, q_type=q_type)}


def count(cat, table: str) -> int:
    """Rows in a catalog table (tests read the catalog directly)."""
    return cat.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def llm_args(build: Path, server: LlmServer) -> list[str]:
    """`generate` arguments for the LLM drafter against the scripted server."""
    return ["generate", "--build", str(build), "--drafter", "llm", "--model", MODEL, "--base-url", server.base_url]
