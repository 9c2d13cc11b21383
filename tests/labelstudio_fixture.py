"""A real Label Studio for the test session, reviewers that act through its API, and small builds.

One server per session (cold start ~50 s; the install on a fresh machine ~2 min more), on loopback,
with its local-files document root at pytest's base temporary folder so every test's build can serve
its images from disk. Tests use separate projects (each has its own build and catalog).

Reviewers: the admin is reviewer one. More reviewers join the way clinicians do: an invite link
(`vgmed-build labelstudio invite`), the sign-up form, and then their own API token from
/api/current-user/token, so their annotations carry their own user id (completed_by).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from vgmed_build.catalog import Catalog, now_iso, open_catalog
from vgmed_build.identifiers import stable_id
from vgmed_build.resources import schema_errors
from vgmed_build.review.server import ServerInfo, connect, invite_url, start_server, stop_server


@pytest.fixture(scope="session")
def labelstudio_home(tmp_path_factory) -> Path:
    """The 'build directory' that owns the session's server (its state lies in <home>/labelstudio/)."""
    return tmp_path_factory.mktemp("labelstudio-home")


@pytest.fixture(scope="session")
def labelstudio(labelstudio_home, tmp_path_factory) -> ServerInfo:
    """The session's Label Studio server (started once, stopped at the end)."""
    home = labelstudio_home
    info = start_server(home, document_root=tmp_path_factory.getbasetemp(), timeout=900)
    connect(info)  # fills in the server identity (its organisation) used for reviewer pseudonyms
    yield info
    stop_server(home)


@dataclass
class Reviewer:
    email: str
    server: ServerInfo  # same server, this reviewer's own token

    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.server.url, api_key=self.server.api_key)

    @property
    def user_id(self) -> int:
        return self.client().users.whoami().id


def add_reviewer(admin: ServerInfo, email: str, password: str = "Review-pass-2026!") -> Reviewer:
    """Sign a new reviewer up through an invite link and return them with their own API token."""
    link = invite_url(admin)
    with httpx.Client(follow_redirects=True, trust_env=False, timeout=60) as web:
        web.get(link)
        csrf = web.cookies.get("csrftoken")
        resp = web.post(
            link,
            data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": link},
        )
        resp.raise_for_status()
        token = web.get(f"{admin.url}/api/current-user/token")
        if token.status_code != 200:
            raise RuntimeError(f"sign-up of {email} failed: {token.status_code} {token.text[:200]}")
    key = token.json()["token"]
    return Reviewer(
        email,
        ServerInfo(url=admin.url, api_key=key, identity=admin.identity, document_root=admin.document_root),
    )


# ---------------------------------------------------------------- builds


def _ct_pixels() -> np.ndarray:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    px = ds.pixel_array.astype(np.float64)
    lo, hi = np.percentile(px, [1, 99])
    return (np.clip((px - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


LABELS = [("liver", "right"), ("spleen", "left"), ("aorta", "midline")]


def make_build(
    root: Path, n_images: int = 2, q_types: tuple[str, ...] = ("localization", "position"), plane: str | None = None
) -> Catalog:
    """A build with real PNGs (cropped CT, not square), one region per label and one draft per q_type;
    ``plane``: the slice plane the regions record (none: a 2D image).

    Rows are inserted as ingest and generate store them (draft records validate against the schema).
    """
    catalog = open_catalog(root)
    ct = _ct_pixels()
    c = catalog.conn  # raw SQL of the fixture, inside the catalog's transaction
    with catalog.transaction():
        c.execute("INSERT INTO sources (name, kind, spec_json) VALUES ('ct', 'dicom', '{}')")
        for i in range(n_images):
            item = f"series{i}"
            g = i % 12  # sizes and boxes repeat after 12 images (the memory test's builds are larger)
            h, w = 96 - 8 * g, 128 - 4 * g  # every image its own size, never square
            pixels = np.roll(ct, 7 * g, axis=1)[:h, :w]
            rel = f"images/ct/{item}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            image_id = stable_id("ct", item, 0)
            c.execute(
                "INSERT INTO items (source, item_key, fingerprint, status, n_images, n_regions, finished_at) "
                "VALUES ('ct', ?, 'f', 'done', 1, ?, ?)", (item, len(LABELS), now_iso())
            )
            c.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?)",
                (
                    image_id,
                    "ct",
                    item,
                    rel,
                    w,
                    h,
                    hashlib.sha256((root / rel).read_bytes()).hexdigest(),
                    "{}",
                ),
            )
            for k, (label, side) in enumerate(LABELS):
                region_id = stable_id(image_id, label)
                box = [5 + 30 * k, 10 + 5 * g, 25 + 30 * k + g, 40 + 5 * g]
                c.execute(
                    "INSERT INTO regions VALUES (?,?,?,?,?,?)",
                    (region_id, image_id, "ct", label, "CT", json.dumps({"plane": plane} if plane else {})),
                )
                for slot, q_type in enumerate(q_types):
                    draft = {
                        "id": stable_id(region_id, q_type, 0),
                        "region_id": region_id,
                        "q_type": q_type,
                        "slot": 0,
                        "question": (
                            f"Where is the {label} in this CT image?"
                            if q_type == "localization"
                            else f"On which side of the body is the {label}?"
                        ),
                        "answer": "yes" if q_type == "localization" else side,
                        "image": rel,
                        "width": w,
                        "height": h,
                        "boxes": [box],
                        "label": label,
                        "display_name": label,
                        "modality": "CT",
                        "body_part": "abdomen",
                        "side": side,
                        "status": "ok",
                        "reason": None,
                        "provenance": {
                            "drafter": "templates",
                            "model": None,
                            "template": f"{q_type}[{slot}]",
                            "template_hash": "0" * 64,
                            "params": {},
                            "prompt_tokens": 0,
                            "completion_tokens": 0,
                            "cost_usd": 0.0,
                            "created_at": now_iso(),
                        },
                    }
                    assert not schema_errors("draft", draft), schema_errors("draft", draft)
                    c.execute(
                        "INSERT INTO drafts VALUES (?,?,?,?,?,?,?)",
                        (draft["id"], region_id, q_type, "ok", None, json.dumps(draft), now_iso()),
                    )
    return catalog


def drafts_of(catalog: Catalog) -> dict[str, dict]:
    return {
        d: json.loads(r) for d, r in catalog.conn.execute("SELECT id, record_json FROM drafts ORDER BY id")
    }


def dump(catalog: Catalog) -> dict[str, list]:
    """Every row of the catalog, to prove a failed command changed nothing."""
    tables = [
        r[0] for r in catalog.conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
    ]
    return {t: catalog.conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}


def secrets_absent(path: Path, *secrets: str) -> bool:
    """True when none of ``secrets`` (nor an e-mail address) appears anywhere in the file's bytes."""
    data = path.read_bytes()
    return not any(s.encode() in data for s in secrets) and re.search(rb"[\w.]+@[\w.]+\.\w+", data) is None
