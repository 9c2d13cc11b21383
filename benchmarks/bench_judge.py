"""Throughput of `vgmed-build judge` against the scripted server with added latency.

    .venv/bin/python benchmarks/bench_judge.py [--drafts 2000] [--concurrency 32] [--latency-ms 200]
    .venv/bin/python benchmarks/bench_judge.py --quick   # its checks of benchmarks/quick.py

Measures, against the same server process in the same run, on copies of one template-drafted build:
  1. the baseline: a bare AsyncOpenAI loop sending the same judge requests, images drawn and encoded
     beforehand (semaphore only: no image work, cache, validation or catalog);
  2. judge: per draft its image read, boxed and encoded, cache lookup, schema validation, verdicts
     committed every 64 or 0.1 s;
  3. the rerun: must finish in < 5 s with zero requests (server's own count).
Ideal rate = concurrency / latency (160 drafts/s for 32 and 200 ms); target >= 80% of the bare loop.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_generate import QUICK, Round, Stage, loop_main, loop_ratios, stage_round  # noqa: E402
from drafting_fixtures import LlmServer, make_catalog  # noqa: E402

from vgmed_build.api import generate  # noqa: E402
from vgmed_build.catalog import Catalog, open_catalog  # noqa: E402
from vgmed_build.drafting.llm import LlmConfig, response_format  # noqa: E402
from vgmed_build.drafting.messages import boxed_image_data_url  # noqa: E402
from vgmed_build.drafting.plan import GenerateOptions  # noqa: E402
from vgmed_build.judge.run import JudgeOptions, load_judge_prompts, run_judge  # noqa: E402
from vgmed_build.judge.verdicts import SCHEMA, judge_messages  # noqa: E402

DRAFTS_PER_IMAGE = 10  # make_catalog's 5 regions x the templates' 2 drafts each
TEMPERATURE, MAX_TOKENS = 0.0, 200  # the command's defaults


def drafts(asked: int) -> int:
    """The drafts measured: ``asked`` rounded up to whole images."""
    return math.ceil(asked / DRAFTS_PER_IMAGE) * DRAFTS_PER_IMAGE


def drafted_build(folder: Path, n: int) -> Path:
    """A build holding exactly ``n`` ok template drafts (rounded up to whole images: ``n`` is one of them)."""
    build = folder / "drafted"
    make_catalog(build, n_images=math.ceil(n / DRAFTS_PER_IMAGE)).close()
    generate(build, options=GenerateOptions(progress=False))
    with open_catalog(build) as cat:
        got = len(cat.ok_draft_ids())
    if got != drafts(n):
        raise RuntimeError(f"expected {DRAFTS_PER_IMAGE} ok drafts per image, got {got} in all")
    return build


def baseline_requests(cat: Catalog) -> list[dict]:
    """Exactly what judge sends for every ok draft (messages with the boxed image, sampling, response_format)."""
    prompts = load_judge_prompts(None)
    fmt = response_format(SCHEMA)
    out = []
    for draft, *_ in cat.ok_drafts_with_images():
        url = boxed_image_data_url(cat.build_dir, {"image": draft["image"], "boxes": draft["boxes"]})
        out.append({"model": "bench", "messages": judge_messages(prompts, draft, url), "temperature": TEMPERATURE,
                    "max_tokens": MAX_TOKENS, "seed": 0, "extra_body": {"response_format": fmt}})
    return out


def measure(n: int, concurrency: int, latency_ms: float, rounds: int, echo: bool = True) -> list[Round]:
    """Alternating rounds of the bare loop and judge (then its rerun), each on a fresh copy of one drafted
    build, against one scripted server process; fails unless judge sends one request per draft and every
    verdict is ok (the server saw each draft's box drawn)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        source = drafted_build(tmp_path, n)
        n = drafts(n)
        server = LlmServer({"latency_ms": latency_ms}, tmp_path)
        options = JudgeOptions(llm=LlmConfig(model="bench", base_url=server.base_url, concurrency=concurrency,
                                             temperature=TEMPERATURE, max_tokens=MAX_TOKENS), progress=False)
        stage = Stage("judge", partial(run_judge, options=options), lambda stats: stats.verdicts == {"ok": n},
                      "judge did not send one request per draft, all judged ok",
                      lambda rerun: rerun.already == n and not rerun.verdicts, "the rerun judged again")
        try:
            for r in range(rounds):
                cat = open_catalog(shutil.copytree(source, tmp_path / f"build{r}"), create=False)
                out.append(stage_round(stage, server, cat, baseline_requests(cat), concurrency, n, r, echo))
        finally:
            server.close()
    return out


def quick(only: str | None = None) -> list:
    """Checks of benchmarks/quick.py: judge's rate and CPU per draft against the bare loop's, best of 3
    alternating rounds of 300 drafts (the rerun must send nothing)."""
    rounds = measure(QUICK["n"], QUICK["concurrency"], QUICK["latency_ms"], QUICK["rounds"], echo=False)
    return loop_ratios("judge", rounds)


def main() -> int:
    return loop_main(__doc__, "judge", "drafts to judge (= LLM requests; rounded up to a multiple of "
                     f"{DRAFTS_PER_IMAGE}, the drafts of one image)", measure, drafts, "baseline")


if __name__ == "__main__":
    sys.exit(main())
