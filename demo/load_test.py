"""Bounded load test of the demo over loopback: N concurrent gradio_client users.

    python demo/load_test.py [--seconds 120] [--clients 8] [--checkpoint PATH]
    python demo/load_test.py --url http://127.0.0.1:7860/ [--pid PID]   # an app already running

Without ``--url`` the app is started in this process on a free 127.0.0.1 port. Each client
repeatedly uploads an example photo (astronaut and group in turn) to ``/analyze`` and probes
the result with a typed description (``/probe``, same session), until ``--seconds`` have
passed. Prints latency percentiles per endpoint, throughput, and the server's resident
memory at the start, at the end and at its peak. Exit code 1 on any error: zero are expected.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

EXAMPLES = [ROOT / "assets" / "examples" / "astronaut.jpg", ROOT / "assets" / "examples" / "group.jpg"]
EXPECTED_FACES = {"astronaut.jpg": "**One face:**", "group.jpg": "**4 faces**"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def start_app(checkpoint: str | None):
    """Launch the demo in this process on a free loopback port; returns (blocks, url)."""
    import torch

    from demo.app import CONCURRENCY, LAUNCH_OPTIONS, build_app, private_temp_dir, torch_threads
    from mpafer.predictor import Predictor

    private_temp_dir()
    torch.set_num_threads(torch_threads())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_app(Predictor(checkpoint))
    demo.queue(default_concurrency_limit=CONCURRENCY).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        **LAUNCH_OPTIONS)
    return demo, demo.local_url


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {"/analyze": [], "/probe": []}
        self.errors: list[str] = []

    def add(self, endpoint: str, seconds: float) -> None:
        with self.lock:
            self.latency[endpoint].append(seconds)

    def fail(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def user(url: str, deadline: float, number: int, record: Recorder) -> None:
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
    except Exception as err:  # noqa: BLE001 - counted, reported at the end
        record.fail(f"client {number}: cannot connect: {err}")
        return
    turn = number
    while time.monotonic() < deadline:
        example = EXAMPLES[turn % len(EXAMPLES)]
        turn += 1
        try:
            start = time.perf_counter()
            message = client.predict(handle_file(str(example)), False, api_name="/analyze")[1]
            record.add("/analyze", time.perf_counter() - start)
            if not message.startswith(EXPECTED_FACES[example.name]):
                record.fail(f"client {number}: {example.name}: unexpected answer {message[:80]!r}")
                continue
            start = time.perf_counter()
            text = client.predict(index=0, text="corners of the mouth pulled up", api_name="/probe")[1]
            record.add("/probe", time.perf_counter() - start)
            if "closest class prompt" not in text:
                record.fail(f"client {number}: probe: unexpected answer {text[:80]!r}")
        except Exception as err:  # noqa: BLE001
            record.fail(f"client {number}: {type(err).__name__}: {err}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--url", default=None, help="an app already running on loopback (default: start one)")
    parser.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its memory")
    parser.add_argument("--checkpoint", default=None, help="without --url: the model to serve (default: bundled)")
    args = parser.parse_args(argv)

    demo = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            parser.error(f"--url must be a loopback address (127.0.0.1), got {host}")
        url, pid = args.url, args.pid
    else:
        demo, url = start_app(args.checkpoint)
        pid = os.getpid()

    peak = [rss_mb(pid) if pid else float("nan")]
    start_rss = peak[0]
    stop = threading.Event()

    def sample() -> None:
        while pid and not stop.wait(0.5):
            peak[0] = max(peak[0], rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    record = Recorder()
    began = time.monotonic()
    deadline = began + args.seconds
    users = [threading.Thread(target=user, args=(url, deadline, n, record)) for n in range(args.clients)]
    for thread in users:
        thread.start()
    for thread in users:
        thread.join()
    elapsed = time.monotonic() - began
    stop.set()
    end_rss = rss_mb(pid) if pid else float("nan")

    print(f"{args.clients} clients for {elapsed:.0f} s against {url} (CPUs: {os.cpu_count()})")
    for endpoint, values in record.latency.items():
        ms = [v * 1000 for v in values]
        print(f"{endpoint:<9} {len(ms):5d} calls {len(ms) / elapsed:6.2f}/s   p50 {percentile(ms, 50):7.0f} ms   "
              f"p90 {percentile(ms, 90):7.0f} ms   p99 {percentile(ms, 99):7.0f} ms")
    print(f"server RSS: start {start_rss:.0f} MiB, end {end_rss:.0f} MiB, peak {peak[0]:.0f} MiB"
          + ("" if pid == os.getpid() or not pid else f" (pid {pid})")
          + (" (in-process: includes the clients)" if pid == os.getpid() else ""))
    print(f"errors: {len(record.errors)}")
    for line in record.errors[:10]:
        print("  " + line)
    if demo is not None:
        demo.close()
    return 1 if record.errors else 0


if __name__ == "__main__":
    sys.exit(main())
