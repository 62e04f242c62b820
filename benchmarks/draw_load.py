"""Load on draw.py's POST /predict: N concurrent clients, a fixed count of requests, on loopback.

    python benchmarks/draw_load.py CHECKPOINT [--clients 8] [--requests 400] [--rounds 5]

Starts `python draw.py CHECKPOINT --port 0` as a process of its own, waits for its address, sends
the same canvas drawing (a 256x256 RGBA PNG, as the page sends) from each client thread, one request
after another, and prints requests per second and the p50/p95/max latency of one prediction.
The server is stopped by its process id at the end.
"""
import argparse
import concurrent.futures
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def canvas_png():
    canvas = Image.new("RGBA", (256, 256), "white")  # a browser's canvas: RGBA, opaque
    ImageDraw.Draw(canvas).line([(82, 64), (183, 64), (119, 210)], fill="black", width=16, joint="curve")
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


def client(port, body, count):
    """Latencies (seconds) of `count` requests on one keep-alive connection. A bare socket rather
    than http.client, whose header parsing costs more than the server's: the load generator shares
    the cores with the server and should take as little of them as it can, as wrk or ab do."""
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = connection.makefile("rb")
        for _ in range(count):
            start = time.perf_counter()
            connection.sendall(request)
            status, length = answers.readline(), 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answer = answers.read(length)
            latencies.append(time.perf_counter() - start)
            if status.split()[1:2] != [b"200"] or not answer.startswith(b'{"digit"'):
                raise SystemExit(f"error: the server answered {status.decode().strip()!r}")
    return latencies


def load(port, body, clients, requests):
    """(requests/s, sorted latencies) of `requests` sent by `clients` threads at once."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(port, body, requests // clients), range(clients)))
    latencies = sorted(t for r in results for t in r)
    return len(latencies) / (time.perf_counter() - start), latencies


def p95(latencies):
    return latencies[int(0.95 * (len(latencies) - 1))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint for draw.py")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--requests", type=int, default=400, help="requests in each round (default: 400)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, for a median (default: 5)")
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
        _, alone = load(port, body, 1, 100)  # also the warm-up
        print(f"one client: latency p50 {1000 * statistics.median(alone):.1f} ms ({os.cpu_count()} CPU cores)")
        rounds = []
        for _ in range(args.rounds):
            rate, latencies = load(port, body, args.clients, args.requests)
            rounds.append(p95(latencies))
            print(f"{len(latencies)} requests from {args.clients} clients: {rate:.0f} requests/s, latency "
                  f"p50 {1000 * statistics.median(latencies):.1f} ms, p95 {1000 * p95(latencies):.1f} ms, "
                  f"max {1000 * latencies[-1]:.1f} ms")
    finally:
        os.kill(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    median = statistics.median(rounds)
    print(f"median p95 of {args.rounds} rounds: {1000 * median:.1f} ms"
          + (f"; target < 50 ms: {'met' if median < 0.05 else 'NOT met'}" if args.clients == 8 else ""))


if __name__ == "__main__":
    main()
