"""Benchmark: the HTTP victim service under concurrent clients, with and without dynamic batching.

Starts serve.py twice on a throwaway ledger (``--batching on`` and ``--batching off``),
then for 1, 8 and 32 concurrent clients sends ``--requests`` requests per client of
``--images`` image(s) each and prints requests/s, images/s and the p50/p99 latency, and the
speed-up batching gives at each concurrency. All in one run, same victim and machine.
``--keys both`` also runs the batching server's clients without an ``Idempotency-Key`` (the client
sends one per batch by default, and the server keeps each answer in its ledger) and prints what the
keys cost.
Usage: python bench/serve_bench.py [--victim-checkpoint CKPT] [--requests 40] [--images 1] [--wait-ms 0]
       [--device cpu|cuda] [--keys on|off|both]
(default victim: run.py's default run, ``python run.py --dataset mnistm5k`` makes it)
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from attacks.client import HTTPConnection  # noqa: E402
from service.ledger import Ledger  # noqa: E402
from service.victim import load_victim  # noqa: E402
from utils import run_cli  # noqa: E402


def start(victim: str, ledger: str, batching: str, wait_ms: float, device: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--victim-checkpoint", victim, "--ledger", ledger,
                             "--port", str(port), "--batching", batching, "--batch-wait-ms", str(wait_ms),
                             "--device", device],
                            env={**os.environ,
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                             os.environ.get("PYTHONPATH")]))},
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serve.py did not start")


def load(url: str, key: str, clients: int, requests: int, n: int, size: int, keys: bool = True) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)

    def client():
        http = HTTPConnection(url, key, idempotency_keys=keys)
        mine = []
        for _ in range(requests):
            t0 = time.perf_counter()
            http.answer(x)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"req_s": len(latencies) / wall, "img_s": len(latencies) * n / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim-checkpoint", default=None, help="the victim (default: run.py's default run)")
    p.add_argument("--requests", type=int, default=40, help="requests per client")
    p.add_argument("--images", type=int, default=1, help="images per request")
    p.add_argument("--wait-ms", type=float, default=0.0, help="serve.py --batch-wait-ms with batching")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    p.add_argument("--device", default="cpu", help="the server's device (serve.py --device): cpu, cuda, auto")
    p.add_argument("--keys", default="on", choices=["on", "off", "both"],
                   help="send an Idempotency-Key with each batch (on: what HTTPConnection does), none, or both, "
                        "alternated on the batching server, to measure what the keys cost")
    args = p.parse_args(argv)
    victim = load_victim(args.victim_checkpoint)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ledger = str(Path(tmp) / "bench.db")
        key = Ledger(ledger).create_account("bench")
        for label, batching in (("batching", "on"), ("no batching", "off")):
            proc, url = start(str(victim.path), ledger, batching, args.wait_ms, args.device)
            try:
                for c in args.clients:
                    results[(label, c)] = load(url, key, c, args.requests, args.images, victim.image_size,
                                               keys=args.keys != "off")
                    if args.keys == "both" and batching == "on":
                        results[("batching, no keys", c)] = load(url, key, c, args.requests, args.images,
                                                                 victim.image_size, keys=False)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"victim {victim.path} ({victim.encoder.arch} w{victim.encoder.width}, {victim.image_size} px), "
          f"{args.requests} requests of {args.images} image(s) per client, server on {args.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
          f"torch threads {torch.get_num_threads()}, batch wait {args.wait_ms:g} ms\n")
    print("| server | clients | requests/s | images/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for (label, c), r in results.items():
        print(f"| {label} | {c} | {r['req_s']:.0f} | {r['img_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    print()
    for c in args.clients:
        print(f"batching speed-up at {c} client(s): "
              f"{results[('batching', c)]['img_s'] / results[('no batching', c)]['img_s']:.2f}x images/s")
        if args.keys == "both":
            print(f"idempotency keys at {c} client(s): "
                  f"{results[('batching', c)]['img_s'] / results[('batching, no keys', c)]['img_s']:.2f}x the "
                  f"images/s without")
    return results


if __name__ == "__main__":
    run_cli(main)
