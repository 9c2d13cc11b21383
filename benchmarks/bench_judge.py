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

import argparse
import asyncio
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_generate import QUICK, Round, bare_loop, loop_ratios, timed  # noqa: E402
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


def drafted_build(folder: Path, n: int) -> Path:
    """A build holding exactly ``n`` ok template drafts (rounded up to whole images: ``n`` is one of them)."""
    build = folder / "drafted"
    make_catalog(build, n_images=math.ceil(n / DRAFTS_PER_IMAGE)).close()
    generate(build, options=GenerateOptions(progress=False))
    with open_catalog(build) as cat:
        got = len(cat.ok_draft_ids())
    if got != math.ceil(n / DRAFTS_PER_IMAGE) * DRAFTS_PER_IMAGE:
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
        n = math.ceil(n / DRAFTS_PER_IMAGE) * DRAFTS_PER_IMAGE
        server = LlmServer({"latency_ms": latency_ms}, tmp_path)
        options = JudgeOptions(llm=LlmConfig(model="bench", base_url=server.base_url, concurrency=concurrency,
                                             temperature=TEMPERATURE, max_tokens=MAX_TOKENS), progress=False)
        try:
            for r in range(rounds):
                build = shutil.copytree(source, tmp_path / f"build{r}")
                cat = open_catalog(build, create=False)
                requests = baseline_requests(cat)
                rate, _, base_cpu = timed(asyncio.run, bare_loop(server.base_url, requests, concurrency))
                sent = server.stats()["requests"]
                stats, wall, cpu = timed(run_judge, cat, options)
                if stats.verdicts != {"ok": n} or server.stats()["requests"] - sent != n:
                    raise RuntimeError(f"judge did not send one request per draft, all judged ok: {stats.summary()}")
                sent = server.stats()["requests"]
                rerun, rerun_s, _ = timed(run_judge, cat, options)
                if rerun.already != n or rerun.verdicts:
                    raise RuntimeError(f"the rerun judged again: {rerun.summary()}")
                out.append(Round(rate, base_cpu / n, n / wall, cpu / n, rerun_s, server.stats()["requests"] - sent))
                cat.close()
                if echo:
                    out[-1].echo(r, "judge")
        finally:
            server.close()
    return out


def quick(only: str | None = None) -> list:
    """Checks of benchmarks/quick.py: judge's rate and CPU per draft against the bare loop's, best of 3
    alternating rounds of 300 drafts (the rerun must send nothing)."""
    rounds = measure(QUICK["n"], QUICK["concurrency"], QUICK["latency_ms"], QUICK["rounds"], echo=False)
    return loop_ratios("judge", rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", type=int, default=2000, help="drafts to judge (= LLM requests; rounded up to a "
                    f"multiple of {DRAFTS_PER_IMAGE}, the drafts of one image)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="server latency added to every reply")
    ap.add_argument("--rounds", type=int, default=2, help="alternating baseline/judge rounds (best reported)")
    ap.add_argument("--quick", action="store_true", help="only the quick guard's checks (300 drafts, 3 rounds; floors "
                    "of benchmarks/quick.py, exit 1 below one)")
    args = ap.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks(["bench_judge"])
    ideal = args.concurrency / (args.latency_ms / 1000.0)
    rounds = measure(args.drafts, args.concurrency, args.latency_ms, args.rounds)
    n = math.ceil(args.drafts / DRAFTS_PER_IMAGE) * DRAFTS_PER_IMAGE
    baseline, rate = max(r.base_rate for r in rounds), max(r.rate for r in rounds)
    rerun_s, rerun_requests = rounds[-1].rerun_s, rounds[-1].rerun_requests
    print(f"drafts={n} concurrency={args.concurrency} latency={args.latency_ms:.0f}ms ideal={ideal:.1f}/s")
    print(f"baseline bare AsyncOpenAI loop (best): {baseline:.1f} requests/s ({100 * baseline / ideal:.0f}% of ideal)")
    print(
        f"judge (best): {rate:.1f} drafts/s ({100 * rate / ideal:.0f}% of ideal, {100 * rate / baseline:.0f}% of "
        f"baseline) -> target >= 80% of baseline: {'PASS' if rate >= 0.8 * baseline else 'FAIL'}"
    )
    print(
        f"rerun (last): {rerun_s:.2f}s, {rerun_requests} requests "
        f"-> target < 5 s and 0 requests: {'PASS' if rerun_s < 5 and rerun_requests == 0 else 'FAIL'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
