"""Vision benchmark (one run): throughput and latency of OCR-det and the YOLO detector.

Measures, on the same images:
- raw ``session.run`` on pre-processed inputs (1 and 16 client threads);
- the engine with one run at a time on all cores, batching off (max_batch=1) and on
  (max_batch=8, 4 ms); one single-threaded run per core in parallel; and the default
  policy (VisionOptions(), auto) — which must be >= the best of batched/serial;
- INT8 (QDQ) vs FP32: speed and agreement (quantize.quantize_pack);
- the HTTP path through a real ``appliance serve`` process, if the app exists:
  API overhead per image vs raw session.run (target <= 10 %).
Cases are interleaved over several rounds because this box's 2 cores are shared.

Usage: .venv/bin/python bench/vision.py [--models DIR] [--images N] [--no-http] [--no-int8]
Needs the test model store (pytest fills .cache/test-models) or --models pointing at one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests" / "engines" / "vision"))

from vision_helpers import LINES, render_page, scene  # noqa: E402

from engines.vision.base import VisionOptions, load_vision_model  # noqa: E402
from engines.vision.detect import preprocess  # noqa: E402
from engines.vision.ocr import det_preprocess  # noqa: E402

OCR, DETECTOR = "ppocr-v4", "yolov8n-320-nudenet"
CORES = len(os.sched_getaffinity(0))
# one session run at a time using every core, with or without batching; or one
# single-threaded run per core side by side; "default" is VisionOptions() (auto)
SERIAL = VisionOptions(max_batch=1, workers=1, intra_op_threads=CORES)
BATCHED = VisionOptions(max_batch=8, max_wait_ms=4.0, workers=1, intra_op_threads=CORES)
PARALLEL = VisionOptions(max_batch=1, workers=CORES, intra_op_threads=1)


def _once(fn: Callable[[Any], Any], items: Sequence[Any], clients: int
          ) -> tuple[float, list[float]]:
    lat: list[float] = []

    def one(item: Any) -> None:
        t = time.perf_counter()
        fn(item)
        lat.append((time.perf_counter() - t) * 1e3)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, items))
    return len(items) / (time.perf_counter() - t0), lat


Case = tuple[Callable[[Any], Any], Sequence[Any], int]


def run_cases(cases: dict[str, Case], rounds: int) -> dict[str, dict[str, float]]:
    """Measure every case ``rounds`` times, interleaved (this box is shared and noisy):
    images/s is the median over rounds, p50/p95 pool all latencies."""
    rates: dict[str, list[float]] = {k: [] for k in cases}
    lats: dict[str, list[float]] = {k: [] for k in cases}
    for fn, items, _ in cases.values():
        fn(items[0])  # warm-up
    for _ in range(rounds):
        for name, (fn, items, clients) in cases.items():
            rate, lat = _once(fn, items, clients)
            rates[name].append(rate)
            lats[name].extend(lat)
    out = {}
    for name in cases:
        q = statistics.quantiles(lats[name], n=20)
        out[name] = {"img_s": statistics.median(rates[name]),
                     "p50_ms": statistics.median(lats[name]), "p95_ms": q[18]}
    return out


def fmt(name: str, m: dict[str, float]) -> str:
    extra = f"   batch {m['mean_batch']:.1f}" if "mean_batch" in m else ""
    return f"  {name:<26} {m['img_s']:8.1f} img/s   p50 {m['p50_ms']:7.1f} ms   " \
           f"p95 {m['p95_ms']:7.1f} ms{extra}"


def load(models: Path, name: str, options: VisionOptions) -> Any:
    manifest = json.loads((models / name / "manifest.json").read_text())
    return load_vision_model(manifest, models / name, options)


def bench_model(models: Path, name: str, images: list[np.ndarray], rounds: int,
                results: dict, http: Http | None = None) -> None:
    """Raw session vs engine (serial / batched / default) [vs HTTP] at 1 and 16 clients."""
    is_ocr = name == OCR
    encoded = [cv2.imencode(".jpg", im)[1].tobytes() for im in images]
    engines = {label: load(models, name, opts) for label, opts in
               (("serial", SERIAL), ("batched", BATCHED), ("parallel", PARALLEL),
                ("default", VisionOptions()))}
    try:
        e0 = engines["default"]  # raw runs use the session the server would use
        if is_ocr:
            sess, inp = e0.det_session, "x"
            tensors = [det_preprocess(im) for im in images]
        else:
            sess, inp = e0.session, e0.input_name
            tensors = [preprocess(im, e0.input_size)[0] for im in images]
        cases: dict[str, Case] = {}
        samples: dict[int, list[tuple[float, float]]] = {1: [], 16: []}
        for c in (1, 16):
            cases[f"raw_c{c}"] = (lambda x, s=sess, n=inp: s.run(None, {n: x}), tensors, c)
            for label, engine in engines.items():
                call = ((lambda b, e=engine: e.detect_boxes(cv2.imdecode(
                    np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR))) if is_ocr
                    else (lambda b, e=engine: e.detect(b)))
                cases[f"{label}_c{c}"] = (call, encoded, c)
            if http is not None:
                cases[f"http_c{c}"] = (http.poster(samples[c]), encoded, c)
        print(f"\n{name} ({'OCR-det' if is_ocr else 'detector'}, {len(images)} images "
              f"{images[0].shape[1]}x{images[0].shape[0]}, {rounds} interleaved rounds)")
        out = run_cases(cases, rounds)
        if http is not None:
            out.update(http.breakdown(encoded))
        for label, engine in engines.items():
            for c in (1, 16):
                out[f"{label}_c{c}"]["mean_batch"] = engine.stats()["mean_batch_size"]
    finally:
        for engine in engines.values():
            engine.close()
    for key, m in out.items():
        if "img_s" in m:
            print(fmt(key.replace("_c", ", clients "), m))
    for c in (1, 16):
        best = max(out[f"serial_c{c}"]["img_s"], out[f"batched_c{c}"]["img_s"])
        out[f"default_vs_best_c{c}"] = ratio = out[f"default_c{c}"]["img_s"] / best
        print(f"  chosen policy (default) / best(serial, batched), {c:>2} clients = {ratio:.2f} "
              f"(target >= 1.0; 0.95 is within noise) {'OK' if ratio >= 0.95 else 'MISS'}")
    if http is not None:
        for c in (1, 16):
            b = out[f"server_c{c}"]
            print(f"  {c:>2} clients, per request: client {b['client_ms']:.1f} ms, server "
                  f"{b['server_ms']:.1f} ms, engine {b['engine_ms']:.1f} ms -> API overhead in "
                  f"the server {b['api_ms']:.1f} ms = {b['api_share']:.0%} of its time "
                  f"(target <= 10 %: {'OK' if b['api_share'] <= 0.10 else 'MISS'})")
            over_raw = out[f"raw_c{c}"]["img_s"] / out[f"http_c{c}"]["img_s"] - 1
            over_eng = out[f"default_c{c}"]["img_s"] / out[f"http_c{c}"]["img_s"] - 1
            out[f"http_overhead_vs_raw_c{c}"] = over_raw
            out[f"http_overhead_vs_engine_c{c}"] = over_eng
            print(f"  HTTP images/s, {c:>2} clients: {over_raw:+.0%} per-image time over raw "
                  f"session.run in this process, {over_eng:+.0%} over the engine call (the "
                  "load generator shares the cores)")
    results[name] = out


def bench_int8(models: Path, det_images: list[np.ndarray], pages: list[np.ndarray],
               results: dict) -> None:
    from engines.vision.quantize import quantize_pack

    print("\nINT8 (QDQ, static) vs FP32 (calibrated and compared on the same images)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, imgs in ((DETECTOR, det_images[:16]), (OCR, pages[:4])):
            cal = Path(tmp) / f"cal-{name}"
            cal.mkdir()
            for i, im in enumerate(imgs):
                cv2.imwrite(str(cal / f"{i}.png"), im)
            manifest = json.loads((models / name / "manifest.json").read_text())
            t0 = time.perf_counter()
            res = quantize_pack(manifest, models / name, cal, Path(tmp) / f"out-{name}")
            took = time.perf_counter() - t0
            results.setdefault("int8", {})[name] = {**res.metrics, "agreement": res.agreement,
                                                    "quantize_s": took}
            m = res.metrics
            print(f"  {name:<20} fp32 {m['fp32_ms']:6.1f} ms/img  int8 {m['int8_ms']:6.1f} "
                  f"ms/img  speed-up {m['speedup']:.2f}x  agreement {res.agreement:.3f}\n    "
                  + ", ".join(f"{k} {v:.3g}" for k, v in m.items()
                              if k not in ("fp32_ms", "int8_ms", "speedup")))


class Http:
    """Posts images to a running box and reads its own latency metric."""

    def __init__(self, base_url: str, headers: dict[str, str], admin: dict[str, str]) -> None:
        import httpx

        self.httpx = httpx
        self.base_url = base_url
        self.admin = admin
        self.local = threading.local()
        self.bodies: dict[int, bytes] = {}
        self.boundary = "benchboundary7f3a"
        self.headers = {"Content-Type": f"multipart/form-data; boundary={self.boundary}",
                        **headers}

    def _multipart(self, jpeg: bytes) -> bytes:  # encoded once per image: a cheap client
        if id(jpeg) not in self.bodies:
            b = self.boundary
            self.bodies[id(jpeg)] = (
                f"--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                f"{DETECTOR}\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"i.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode() + jpeg + f"\r\n--{b}--\r\n".encode()
        return self.bodies[id(jpeg)]

    def poster(self, samples: list[tuple[float, float]]) -> Callable[[bytes], Any]:
        """A detect call recording (client ms, engine ms from the response) per request."""
        def post(body: bytes) -> None:
            client = getattr(self.local, "c", None) or self.httpx.Client(timeout=60)
            self.local.c = client
            t0 = time.perf_counter()
            r = client.post(f"{self.base_url}/v1/vision/detect", content=self._multipart(body),
                            headers=self.headers)
            r.raise_for_status()
            samples.append(((time.perf_counter() - t0) * 1e3,
                            sum(r.json()["timings_ms"].values())))
        return post

    def server_seconds(self) -> tuple[float, float]:
        """(sum, count) of the box's latency histogram for the detect route."""
        text = self.httpx.get(f"{self.base_url}/metrics", headers=self.admin).text
        vals = {}
        for kind in ("sum", "count"):
            line = next(ln for ln in text.splitlines() if ln.startswith(
                f"appliance_request_latency_seconds_{kind}") and "/v1/vision/detect" in ln)
            vals[kind] = float(line.rsplit(" ", 1)[1])
        return vals["sum"], vals["count"]

    def breakdown(self, encoded: Sequence[bytes]) -> dict[str, dict[str, float]]:
        """Client, server and engine time per request at 1 and 16 clients."""
        out = {}
        for c in (1, 16):
            samples: list[tuple[float, float]] = []
            s0, n0 = self.server_seconds()
            _once(self.poster(samples), encoded, c)
            s1, n1 = self.server_seconds()
            server = (s1 - s0) / (n1 - n0) * 1e3
            client = statistics.mean(x for x, _ in samples)
            engine = statistics.mean(e for _, e in samples)
            out[f"server_c{c}"] = {"client_ms": client, "server_ms": server, "engine_ms": engine,
                                   "api_ms": server - engine,
                                   "api_share": (server - engine) / server}
        return out


@contextlib.contextmanager
def http_server(models: Path) -> Iterator[Http | None]:
    """A real ``appliance serve`` subprocess (tests.conftest.Box) with an unlimited seat."""
    try:
        import httpx

        from tests.conftest import Box
    except ImportError as exc:
        print(f"\nHTTP path skipped: the app is not in the tree yet ({exc})")
        yield None
        return
    with tempfile.TemporaryDirectory() as data:
        box = Box(Path(data) / "box", models.resolve())
        try:
            # a seat without concurrency/rate limits (0 = unlimited), so the guard's 429s
            # do not cut the 16-client runs short
            admin = {"Authorization": f"Bearer {box.api_key}"}
            seat = httpx.post(f"{box.base_url}/admin/seats", headers=admin, json={
                "name": "bench", "max_concurrent": 0, "requests_per_minute": 0}).json()
            key = httpx.post(f"{box.base_url}/admin/seats/{seat['id']}/keys",
                             headers=admin).json()["key"]
            yield Http(box.base_url, {"Authorization": f"Bearer {key}"}, admin)
        finally:
            box.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "test-models")
    ap.add_argument("--images", type=int, default=32, help="detector images per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    det_images = [scene(i, 480, 640) for i in range(args.images)]
    # OCR-det on same-size pages (736x736 model input), so batching can group them
    kinds = ("plain", "noise", "gradient")
    pages = [cv2.resize(render_page(LINES[i % 4:i % 4 + 4], kinds[i % 3], seed=i)[0], (736, 736))
             for i in range(max(16, args.images // 2))]
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        post = None if args.no_http else stack.enter_context(http_server(args.models))
        bench_model(args.models, DETECTOR, det_images, args.rounds, results, post)
    bench_model(args.models, OCR, pages, args.rounds, results)
    if not args.no_int8:
        bench_int8(args.models, det_images, pages, results)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
