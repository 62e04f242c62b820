"""Load on draw.py's POST /predict: N concurrent clients, a fixed count of requests, on loopback.

    python benchmarks/draw_load.py CHECKPOINT [--clients 8] [--requests 400]

Starts `python draw.py CHECKPOINT --port 0` as a process of its own, waits for its address, sends
the same canvas drawing (a 280x280 PNG, as the page sends) from each client thread, one request
after another, and prints requests per second and the p50/p95/max latency of one prediction.
The server is stopped by its process id at the end.
"""
import argparse
import concurrent.futures
import http.client
import io
import os
import signal
import statistics
import subprocess
import sys
import time

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canvas_png():
    canvas = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(canvas).line([(90, 70), (200, 70), (130, 230)], fill="black", width=18, joint="curve")
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def client(port, body, count):
    """Latencies (seconds) of `count` requests on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"error: the server answered {response.status}")
    connection.close()
    return latencies


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint for draw.py")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--requests", type=int, default=400, help="requests in all (default: 400)")
    args = p.parse_args()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "draw.py"), args.checkpoint, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()
        address = server.stdout.readline()
        if not address.startswith("open http://"):
            raise SystemExit(f"error: draw.py did not start: {address.strip()}")
        port = int(address.split(":")[2].split("/")[0])
        body = canvas_png()
        client(port, body, 5)  # warm-up
        per_client = args.requests // args.clients
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(lambda _: client(port, body, per_client), range(args.clients)))
        seconds = time.perf_counter() - start
    finally:
        os.kill(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    latencies = sorted(t for r in results for t in r)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{len(latencies)} requests from {args.clients} clients in {seconds:.2f} s: "
          f"{len(latencies) / seconds:.0f} requests/s, latency p50 {1000 * p50:.1f} ms, "
          f"p95 {1000 * p95:.1f} ms, max {1000 * latencies[-1]:.1f} ms ({os.cpu_count()} CPU cores)")
    print(f"target: p95 < 50 ms with 8 clients ({'met' if p95 < 0.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
