"""Hostile model text through ``env.step``: exceptions, step-time tail and the slowest step.

Targets (issue 16): 0 exceptions in 100,000 actions over MMSearch-v0, MMSearch-Deep-v0 and
MMSearch-ToolJSON-v0; p99 step time reported for actions up to 100 KB; a 1 MB action in
under 100 ms.

    python benchmarks/fuzz_env.py [--actions 100000] [--seed 0] [--out PATH]

The actions come from a seeded generator (the same families as ``tests/test_env_fuzz.py``:
lone surrogates, control and bidi characters, huge and non-finite numbers, deep JSON, tag
soup, long inputs), stepped through the registered envs with their real readthrough search
cache in a fresh temporary directory. After every step the env must agree with itself (turn
count). Separately, a set of 1,000,000-character actions of the slowest known shapes is
timed (median of 3) to find the worst step. Times are CPU seconds of this process
(``time.process_time``; what a step costs, robust on a shared machine) and wall seconds.
Writes JSON to stdout and to benchmarks/results/fuzz_env.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ENV_IDS = ("MMSearch-v0", "MMSearch-Deep-v0", "MMSearch-ToolJSON-v0")
SMALL = 100_000
"""Actions up to this many UTF-8 bytes count towards the p99."""
BIG = 1_000_000
"""Characters of each timed large action."""
TASKS = 16
"""Episodes cycle over the first TASKS tasks of the test split."""

TAGS = ["<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
        "<search><img></search>", "<crop>", "</crop>", "<img_search>", "</img_search>", "<img>",
        "<tool_call>", "</tool_call>", "{", "}", "[", "]", '"', ",", ":", '"name"', '"arguments"',
        '"text_search"', '"image_search"', '"query"', '"bbox_2d"', '"\\ud800"', "the", " ", "\n"]
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
NUMBERS = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e308", "4.9e-324", "1000001", "-0",
           "1_000", "\u0663", "nan", "inf", "0.5"]


def _char(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return chr(rng.randrange(0xD800, 0xE000))  # lone surrogate
    if roll < 0.40:
        return chr(rng.choice([*range(0x20), 0x7F, *range(0x80, 0xA0)]))  # control
    if roll < 0.50:
        return rng.choice(BIDI)
    if roll < 0.75:
        return chr(rng.randrange(0x20, 0x7F))
    return chr(rng.randrange(0xA0, 0x110000))


def _text(rng: random.Random, n: int) -> str:
    return "".join(_char(rng) for _ in range(n))


def _number(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        return str(rng.randint(-2000, 2000))
    if roll < 0.6:
        return "9" * rng.choice([20, 33, 309, 400, 1000, 4300, 4301, 6000])
    if roll < 0.8:
        return rng.choice(NUMBERS)
    return repr(rng.uniform(-1e9, 1e9))


def _box(rng: random.Random) -> str:
    return ",".join(_number(rng) for _ in range(rng.choice([3, 4, 4, 4, 5])))


def action(rng: random.Random) -> tuple[str, str]:
    """One hostile action and the name of its family."""
    kind = rng.choice(["text_search", "img_search", "crop", "tool_text", "tool_bbox", "tool_args_str",
                       "deep_json", "answer", "tool_answer", "tag_soup", "plain", "long"])
    t = _text(rng, rng.randint(0, 40))
    if kind == "text_search":
        return f"<reason>r</reason><text_search>{t}</text_search>", kind
    if kind == "img_search":
        return f"<reason>r</reason><img_search>{rng.choice([t, _box(rng), '<img>'])}</img_search>", kind
    if kind == "crop":
        tag = rng.choice(["<search><img></search>", "<img_search><img></img_search>"])
        return f"<reason>r</reason><crop>{_box(rng)}</crop>{tag}", kind
    if kind == "tool_text":
        return "<tool_call>" + json.dumps({"name": "text_search", "arguments": {"query": t}}) + "</tool_call>", kind
    if kind == "tool_bbox":
        return f'<tool_call>{{"name": "image_search", "arguments": {{"bbox_2d": [{_box(rng)}]}}}}</tool_call>', kind
    if kind == "tool_args_str":
        args = json.dumps(json.dumps({"bbox_2d": f"[{_box(rng)}]", "query": t}))
        return '<tool_call>{{"name": "{}", "arguments": {}}}</tool_call>'.format(
            rng.choice(["image_search", "text_search"]), args), kind
    if kind == "deep_json":
        n = rng.choice([10, 1000, 10_000, 50_000])
        opener = rng.choice(["[", '{"a":'])
        return '<tool_call>{"name": "text_search", "arguments": ' + opener * n + "</tool_call>", kind
    if kind == "answer":
        return f"<reason>r</reason><answer>{t}</answer>", kind
    if kind == "tool_answer":
        return "<tool_call>" + json.dumps({"name": "answer", "arguments": {"answer": t}}) + "</tool_call>", kind
    if kind == "tag_soup":
        pieces = [rng.choice([rng.choice(TAGS), _char(rng), _number(rng)]) for _ in range(rng.randint(1, 60))]
        return "".join(pieces), kind
    if kind == "plain":
        return t, kind
    piece = rng.choice(TAGS + ["x", "\u00e9", "\ud800", "\u202e", "the ", "a\u2014", "\U0001f600"])
    return piece * (rng.choice([1_000, 10_000, 50_000]) // len(piece)), kind


def large_actions(rng: random.Random) -> dict[str, str]:
    """1,000,000-character actions of the slowest shapes found (answers are scored in full)."""
    n = BIG
    bmp = "".join(chr(rng.randrange(0x20, 0xD000)) for _ in range(n - 17))
    return {
        "answer_random_bmp": "<answer>" + bmp + "</answer>",
        "answer_articles": "<answer>" + ("the an a " * n)[: n - 17] + "</answer>",
        "answer_article_dashes": "<answer>" + ("a\u2014" * n)[: n - 17] + "</answer>",
        "answer_surrogates": "<answer>" + ("\ud800x" * n)[: n - 17] + "</answer>",
        "answer_cjk_emoji": "<answer>" + ("\u00e9\u6f22\u5b57\U0001f600" * n)[: n - 17] + "</answer>",
        "reason_then_answer": "<reason>" + "x" * (n - 43) + "</reason><answer>a</answer>",
        "many_answers": ("<answer>a</answer>" * n)[:n],
        "tag_soup": "".join(rng.choice(TAGS) for _ in range(n // 5))[:n],
        "tool_call_big": ('<tool_call>{"name": "text_search", "arguments": {"query": "' + "q" * (n - 70)
                          + '"}}</tool_call>'),
        "no_action": bmp + "x" * 17,
    }


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class Runner:
    """Steps one env, resetting when an episode ends; records times and exceptions."""

    def __init__(self, env_id: str) -> None:
        import gymnasium as gym

        import mmsearch_gym  # noqa: F401  (registers the ids)
        self.env = gym.make(env_id).unwrapped
        self.seed = 0
        self.reset()
        self.times: list[float] = []
        self.small: list[float] = []
        self.small_cpu: list[float] = []
        self.errors: Counter[str] = Counter()
        self.examples: list[dict[str, str]] = []
        self.worst: dict[str, Any] = {"cpu_ms": -1.0}

    def step(self, text: str, kind: str) -> float:
        before = len(self.env.turns)
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            _, _, terminated, truncated, info = self.env.step(text)
            elapsed = time.perf_counter() - start
            if info["turn"] != before + 1 or len(self.env.turns) != before + 1:
                raise AssertionError(f"turn count {info['turn']} after {before} turns")
        except Exception as err:  # counted, not fatal: finding these is the point
            elapsed = time.perf_counter() - start
            name = type(err).__name__
            self.errors[name] += 1
            if len(self.examples) < 10:
                self.examples.append({"type": name, "kind": kind, "action": repr(text[:160]),
                                      "where": traceback.format_exc(limit=-1).strip().splitlines()[-2].strip()})
            terminated = truncated = True  # the env's state is unknown: start a fresh episode
        cpu = time.process_time() - cpu
        self.times.append(elapsed)
        size = _utf8_len(text)
        if size <= SMALL:
            self.small.append(elapsed)
            self.small_cpu.append(cpu)
        if cpu * 1000 > self.worst["cpu_ms"]:
            self.worst = {"cpu_ms": round(cpu * 1000, 3), "wall_ms": round(elapsed * 1000, 3), "chars": len(text),
                          "utf8_bytes": size, "kind": kind}
        if terminated or truncated:
            self.reset()
        return cpu

    def reset(self) -> None:
        """A new episode on one of TASKS tasks: their images stay in the env's view cache, so
        the run measures steps, not image decoding in reset."""
        self.seed += 1
        self.env.reset(seed=self.seed, options={"task_index": self.seed % TASKS})


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def run(actions: int, seed: int) -> dict[str, Any]:
    os.environ["MMSEARCH_GYM_CACHE"] = tempfile.mkdtemp(prefix="fuzz-env-cache-")
    rng = random.Random(seed)
    runners = {env_id: Runner(env_id) for env_id in ENV_IDS}
    kinds: Counter[str] = Counter()
    start = time.perf_counter()
    for i in range(actions):
        text, kind = action(rng)
        kinds[kind] += 1
        runners[ENV_IDS[i % len(ENV_IDS)]].step(text, kind)
    fuzz_s = time.perf_counter() - start
    large = {}
    for name, text in large_actions(rng).items():
        cpu, wall = {}, {}
        for env_id, runner in runners.items():
            times = []
            for _ in range(3):
                runner.reset()
                times.append((runner.step(text, "large:" + name), runner.times[-1]))
            cpu[env_id] = round(1000 * statistics.median(t[0] for t in times), 1)
            wall[env_id] = round(1000 * statistics.median(t[1] for t in times), 1)
        large[name] = {"chars": len(text), "utf8_bytes": _utf8_len(text), "median_cpu_ms": cpu, "median_wall_ms": wall}
    per_dialect = {}
    for env_id, r in runners.items():
        n = len(r.times) - 3 * len(large)
        per_dialect[env_id] = {
            "dialect": r.env.dialect.name, "actions": n, "exceptions": sum(r.errors.values()),
            "exception_types": dict(r.errors), "examples": r.examples,
            "p50_ms_up_to_100KB": {"cpu": _ms(r.small_cpu, 0.50), "wall": _ms(r.small, 0.50)},
            "p99_ms_up_to_100KB": {"cpu": _ms(r.small_cpu, 0.99), "wall": _ms(r.small, 0.99)},
            "max_ms_up_to_100KB": {"cpu": _ms(r.small_cpu, 1.0), "wall": _ms(r.small, 1.0)},
            "worst_step": r.worst,
        }
    worst = max((r.worst for r in runners.values()), key=lambda w: w["cpu_ms"])
    worst_large = max((ms, name, env_id) for name, v in large.items() for env_id, ms in v["median_cpu_ms"].items())
    return {
        "benchmark": "fuzz_env",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seed": seed,
        "actions": actions,
        "action_families": dict(sorted(kinds.items())),
        "fuzz_seconds": round(fuzz_s, 1),
        "exceptions": sum(d["exceptions"] for d in per_dialect.values()),
        "p99_ms_up_to_100KB": {k: max(d["p99_ms_up_to_100KB"][k] for d in per_dialect.values())
                               for k in ("cpu", "wall")},
        "worst_step": worst,
        "large_1M_chars": large,
        "worst_1M_chars_median_cpu_ms": {"ms": worst_large[0], "action": worst_large[1], "env": worst_large[2],
                                         "utf8_bytes": large[worst_large[1]]["utf8_bytes"]},
        "load_average_at_end": list(os.getloadavg()),
        "per_env": per_dialect,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fuzz_env.json")
    args = parser.parse_args()
    result = run(args.actions, args.seed)
    text = json.dumps(result, indent=2, ensure_ascii=True)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
