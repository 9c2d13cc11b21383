"""Throughput of `generate --drafter llm` against the scripted server with added latency.

    .venv/bin/python benchmarks/bench_generate.py [--drafts 2000] [--concurrency 32] [--latency-ms 200]
    .venv/bin/python benchmarks/bench_generate.py --quick   # its checks of benchmarks/quick.py

Measures, against the same server process in the same run:
  1. the baseline: a bare AsyncOpenAI loop sending the same requests (semaphore only: no cache,
     parsing, validation, lint or catalog);
  2. generate: cache lookups, schema validation, lint, one catalog transaction per region;
  3. the rerun: must finish in < 5 s with zero requests (server's own count).
Ideal rate = concurrency / latency (160 drafts/s for 32 and 200 ms); target >= 80% of it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from drafting_fixtures import LlmServer, make_catalog  # noqa: E402

from vgmed_build.drafting.generate import GenerateOptions, run_generate  # noqa: E402
from vgmed_build.drafting.llm import LlmConfig, response_format  # noqa: E402
from vgmed_build.drafting.messages import attribute_messages  # noqa: E402
from vgmed_build.drafting.templates import load_prompts  # noqa: E402


async def bare_loop(base_url: str, requests: list[dict], concurrency: int) -> float:
    """The same chat requests with nothing around them (no cache, validation, lint, catalog);
    returns requests/s."""
    import openai

    client = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(kwargs: dict) -> None:
        async with sem:
            await client.chat.completions.create(**kwargs)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(kw) for kw in requests))
    elapsed = time.perf_counter() - t0
    await client.close()
    return len(requests) / elapsed


def baseline_requests(cat, n: int) -> list[dict]:
    """Exactly what generate sends for these regions (messages, sampling, response_format)."""
    prompts = load_prompts()
    fmt = response_format("llm_attribute")
    return [
        {
            "model": "bench",
            "messages": attribute_messages(prompts, region, None),
            "temperature": 0.7,
            "max_tokens": 300,
            "seed": 0,
            "extra_body": {"response_format": fmt},
        }
        for region in list(cat.regions())[:n]
    ]


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): CPU per draft stays comparable on a busy
    machine, where wall-clock rates of both loops drop together."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0, time.process_time() - c0


@dataclass
class Round:
    """One round: the bare loop's and the stage's (generate, judge) rates and CPU per request, and the
    stage's rerun."""

    base_rate: float
    base_cpu: float
    rate: float
    cpu: float
    rerun_s: float
    rerun_requests: int

    def echo(self, r: int, stage: str) -> None:
        print(f"round {r}: baseline {self.base_rate:.1f} requests/s, CPU {1000 * self.base_cpu:.2f} ms/request")
        print(f"round {r}: {stage} {self.rate:.1f} drafts/s, CPU {1000 * self.cpu:.2f} ms/draft")
        print(f"round {r}: rerun {self.rerun_s:.2f}s, {self.rerun_requests} requests")


@dataclass(frozen=True)
class Stage:
    """A stage that sends one LLM request per draft (generate, judge) as its benchmark runs it, and what a
    round must see: the first run sends one request per draft and passes ``first_ok``, the rerun passes
    ``rerun_ok`` (the errors say what went wrong otherwise)."""

    name: str
    run: Callable  # (catalog) -> the stage's stats
    first_ok: Callable  # (stats) -> bool
    first_error: str
    rerun_ok: Callable  # (stats of the rerun) -> bool
    rerun_error: str


def stage_round(stage: Stage, server, cat, requests: list[dict], concurrency: int, n: int, r: int,
                echo: bool) -> Round:
    """Round ``r``: the bare loop on ``requests``, then the stage on ``cat`` and its rerun, checked; the
    catalog is closed after, the round printed when ``echo``."""
    rate, _, base_cpu = timed(asyncio.run, bare_loop(server.base_url, requests, concurrency))
    sent = server.stats()["requests"]
    stats, wall, cpu = timed(stage.run, cat)
    if not stage.first_ok(stats) or server.stats()["requests"] - sent != n:
        raise RuntimeError(f"{stage.first_error}: {stats.summary()}")
    sent = server.stats()["requests"]
    rerun, rerun_s, _ = timed(stage.run, cat)
    if not stage.rerun_ok(rerun):
        raise RuntimeError(f"{stage.rerun_error}: {rerun.summary()}")
    out = Round(rate, base_cpu / n, n / wall, cpu / n, rerun_s, server.stats()["requests"] - sent)
    cat.close()
    if echo:
        out.echo(r, stage.name)
    return out


def measure(n: int, concurrency: int, latency_ms: float, rounds: int, echo: bool = True) -> list[Round]:
    """Alternating rounds of the bare loop and generate (then its rerun), each on a fresh catalog, against
    one scripted server process; fails if generate sends other than one request per draft."""
    targets = [
        (f"t{i}", f"structure {i}", [], "unknown", "organ", [i % 100, i % 90, i % 100 + 20, i % 90 + 30])
        for i in range(n)
    ]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = LlmServer({"latency_ms": latency_ms}, tmp_path)
        try:
            options = GenerateOptions(
                drafter="llm",
                localization_per_region=0,
                progress=False,
                llm=LlmConfig(model="bench", base_url=server.base_url, concurrency=concurrency),
            )
            stage = Stage("generate", partial(run_generate, options=options), lambda stats: stats.ok == n,
                          "generate did not send one request per draft", lambda rerun: rerun.drafts_skipped == n,
                          "the rerun drafted again")
            for r in range(rounds):
                cat = make_catalog(tmp_path / f"build{r}", targets=targets)
                out.append(stage_round(stage, server, cat, baseline_requests(cat, n), concurrency, n, r, echo))
        finally:
            server.close()
    return out


QUICK = {"n": 300, "concurrency": 32, "latency_ms": 200.0, "rounds": 3}


def quick(only: str | None = None) -> list:
    """Checks of benchmarks/quick.py: generate's rate and CPU per draft against the bare loop's, best of
    3 alternating rounds of 300 drafts (the rerun must send nothing)."""
    rounds = measure(QUICK["n"], QUICK["concurrency"], QUICK["latency_ms"], QUICK["rounds"], echo=False)
    return loop_ratios("generate", rounds)


def loop_ratios(stage: str, rounds: list[Round]) -> list:
    """The quick guard's two checks of a stage that sends one LLM request per draft (generate, judge):
    its best rate and CPU per draft against the bare client loop's, over QUICK rounds."""
    from quick import Ratio

    idle_rerun = all(r.rerun_requests == 0 for r in rounds)
    base, rate = max(r.base_rate for r in rounds), max(r.rate for r in rounds)
    base_cpu, cpu = min(r.base_cpu for r in rounds), min(r.cpu for r in rounds)
    ideal = QUICK["concurrency"] / (QUICK["latency_ms"] / 1000)
    return [
        Ratio(f"{stage}: drafts/s / bare client loop req/s", rate / base,
              f"{rate:.1f} vs {base:.1f}/s (ideal {ideal:.0f}/s), {QUICK['n']} drafts, rerun "
              f"{'sent nothing' if idle_rerun else 'SENT REQUESTS'}", same=idle_rerun),
        Ratio(f"{stage}: bare loop CPU/request / {stage} CPU/draft", base_cpu / cpu,
              f"{1e3 * base_cpu:.2f} vs {1e3 * cpu:.2f} ms CPU"),
    ]


def loop_main(doc: str, stage: str, drafts_help: str, measure: Callable, drafts: Callable[[int], int],
              target: str) -> int:
    """The command of a one-request-per-draft stage's benchmark (generate, judge): its options, the
    rounds, and the report against the bare loop; ``target`` ("ideal" or "baseline") is what the stage
    must reach 80% of; ``drafts(--drafts)`` is how many it measures."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", type=int, default=2000, help=drafts_help)
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="server latency added to every reply")
    ap.add_argument("--rounds", type=int, default=2, help=f"alternating baseline/{stage} rounds (best reported)")
    ap.add_argument("--quick", action="store_true", help="only the quick guard's checks (300 drafts, 3 rounds; floors "
                    "of benchmarks/quick.py, exit 1 below one)")
    args = ap.parse_args()
    if args.quick:
        from quick import run_checks

        return run_checks([f"bench_{stage}"])
    ideal = args.concurrency / (args.latency_ms / 1000.0)
    n = drafts(args.drafts)
    rounds = measure(args.drafts, args.concurrency, args.latency_ms, args.rounds)
    baseline, rate = max(r.base_rate for r in rounds), max(r.rate for r in rounds)
    rerun_s, rerun_requests = rounds[-1].rerun_s, rounds[-1].rerun_requests
    goal = ideal if target == "ideal" else baseline
    print(f"drafts={n} concurrency={args.concurrency} latency={args.latency_ms:.0f}ms ideal={ideal:.1f}/s")
    print(f"baseline bare AsyncOpenAI loop (best): {baseline:.1f} requests/s ({100 * baseline / ideal:.0f}% of ideal)")
    print(
        f"{stage} (best): {rate:.1f} drafts/s ({100 * rate / ideal:.0f}% of ideal, "
        f"{100 * rate / baseline:.0f}% of baseline) -> target >= 80% of {target}: "
        f"{'PASS' if rate >= 0.8 * goal else 'FAIL'}"
    )
    print(
        f"rerun (last): {rerun_s:.2f}s, {rerun_requests} requests "
        f"-> target < 5 s and 0 requests: {'PASS' if rerun_s < 5 and rerun_requests == 0 else 'FAIL'}"
    )
    return 0


def main() -> int:
    return loop_main(__doc__, "generate", "attribute drafts (= LLM requests)", measure, lambda d: d, "ideal")


if __name__ == "__main__":
    sys.exit(main())
