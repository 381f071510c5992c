"""How long each hostile-server fault of issue 16 holds a search, and what comes out of it.

    python benchmarks/bench_http_faults.py [--quick]

Runs each fault against a fake server on 127.0.0.1 through the real SearXNG backend with the
library's default client settings (unless noted) and writes JSON to stdout and to
benchmarks/results/http_faults.json: seconds held, the exception class and message start, and
for the Retry-After fault the seconds of sleep asked for. ``--quick`` uses a 2 s deadline for
the dripping server instead of the default 45 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from search.webfake import FakeWebServer, Reply  # noqa: E402

from mmsearch_gym.search.deadline import DEFAULT_REQUEST_DEADLINE, DEFAULT_SEARCH_DEADLINE  # noqa: E402
from mmsearch_gym.search.http import HttpClient  # noqa: E402
from mmsearch_gym.search.searxng import SearxngBackend  # noqa: E402

PAGE = {"results": [{"title": f"Result {i}", "url": f"https://r{i}.example/", "content": "x" * 20}
                    for i in range(6)]}


def run(replies: list[Reply], client: HttpClient, **backend_kw: Any) -> dict[str, Any]:
    with FakeWebServer(replies) as server:
        backend = SearxngBackend(server.url, client=client, **backend_kw)
        start = time.monotonic()
        try:
            outcome = f"{len(backend.text_search('q', 1))} hit(s)"
        except Exception as exc:  # the point is to record whatever comes out
            outcome = f"{type(exc).__name__}: {str(exc)[:160]}"
        held = time.monotonic() - start
    return {"held_s": round(held, 2), "outcome": outcome, "requests": len(server.requests),
            "bytes_dripped": server.dripped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    deadline = 2.0 if args.quick else DEFAULT_REQUEST_DEADLINE
    sleeps: list[float] = []
    results = {
        "defaults": {"connect_timeout_s": 5.0, "read_timeout_s": 30.0,
                     "request_deadline_s": DEFAULT_REQUEST_DEADLINE, "search_deadline_s": DEFAULT_SEARCH_DEADLINE},
        "deep_json_100000": run([Reply(200, b"[" * 100_000 + b"]" * 100_000, content_type="application/json")],
                                HttpClient(trust_env=False)),
        "number_5000_digits": run([Reply(200, b'{"results": [' + b"9" * 5000 + b"]}",
                                         content_type="application/json")], HttpClient(trust_env=False)),
        "drip_1_byte_per_0.5s_read_timeout_1s": {
            "deadline_s": deadline,
            **run([Reply(200, PAGE, drip=0.5)], HttpClient(read_timeout=1.0, deadline=deadline, trust_env=False))},
        "retry_after_100000s": {
            **run([Reply(429, "slow down", headers={"Retry-After": "100000"})] * 4,
                  HttpClient(trust_env=False, sleep=sleeps.append)),
            "sleep_asked_s": sum(sleeps)},
        "machine": platform.platform(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "http_faults.json"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
