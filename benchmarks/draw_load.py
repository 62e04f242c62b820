"""Load on draw.py's POST /predict, honest and hostile, on loopback.

    python benchmarks/draw_load.py CHECKPOINT [--clients 8] [--requests 400] [--rounds 5] [--seconds 10]
    python benchmarks/draw_load.py CHECKPOINT --rounds 0 --only "RLE BMP"  # one hostile load

Starts `python draw.py CHECKPOINT --port 0` as a process of its own and waits for its address.
Throughput: the same canvas drawing (a 256x256 RGBA PNG, as the page sends) from each of N client
threads, one request after another, printing requests per second and the p50/p95/max latency of a
prediction. Then an honest client (one drawing at a time, each on a new connection) alone and
beside each hostile load, run from a process of its own: idle sockets, sockets that send a byte a
second or every 50 ms, clients posting the slowest images image_files.py reads (hostile_images.py),
many clients; it prints the honest client's p50/p95 and how many of its requests were not answered
200. Last, how long Ctrl-C takes to stop the server: after those loads with 60 clients posting slow
images, and on a fresh server, alone and with those clients. Every load is bounded in clients and
seconds.
"""
import argparse
import concurrent.futures
import math
import multiprocessing
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from PIL import Image, ImageDraw

from hostile_images import jpeg_markers, largest_read, rle_bmp, saved, serpentine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HONEST = 30  # requests of the honest client beside each load


def canvas_png():
    canvas = Image.new("RGBA", (256, 256), "white")  # a browser's canvas: RGBA, opaque
    ImageDraw.Draw(canvas).line([(82, 64), (183, 64), (119, 210)], fill="black", width=16, joint="curve")
    return saved(canvas, "PNG", optimize=True)


def photo_png(side=2000):
    """A photo of the largest kind the page takes (3.5 MB of PNG): grey paper with sensor noise and
    a 7 on it, which goes all the way through photo.py's cleanup."""
    noise = random.Random(0).randbytes(side * side)
    paper = Image.frombytes("L", (side, side), noise).point(lambda v: 160 + v * 80 // 255)
    ImageDraw.Draw(paper).line([(side // 3, side // 4), (2 * side // 3, side // 4), (side // 2, 3 * side // 4)],
                               fill=0, width=side // 40)
    return saved(paper, "PNG", optimize=True)


def post_request(port, body):
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body))


def read_answer(answers):
    """(status, body) of one answer from a connection's file; raises ConnectionError if it closed."""
    status, length = answers.readline(), 0
    if not status:
        raise ConnectionError("closed")
    while (line := answers.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return int(status.split()[1]), answers.read(length)


def client(port, body, count):
    """Latencies (seconds) of `count` requests on one keep-alive connection. A bare socket rather
    than http.client, whose header parsing costs more than the server's: the load generator shares
    the cores with the server and should take as little of them as it can, as wrk or ab do."""
    request, latencies = post_request(port, body), []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = connection.makefile("rb")
        for _ in range(count):
            start = time.perf_counter()
            connection.sendall(request)
            status, answer = read_answer(answers)
            latencies.append(time.perf_counter() - start)
            if status != 200 or not answer.startswith(b'{"digit"'):
                raise SystemExit(f"error: the server answered {status}: {answer[:200]!r}")
    return latencies


def load(port, body, clients, requests):
    """(requests/s, sorted latencies) of `requests` sent by `clients` threads at once."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(port, body, requests // clients), range(clients)))
    latencies = sorted(t for r in results for t in r)
    return len(latencies) / (time.perf_counter() - start), latencies


def p95(latencies):
    """The 95th percentile of sorted latencies, by nearest rank: of two, the larger."""
    return latencies[math.ceil(0.95 * len(latencies)) - 1]


def honest(port, body, count=HONEST, pause=0.1):
    """(sorted latencies of the requests answered 200, what the others got): one drawing at a time,
    each on a new connection (a user's page whose kept-alive one was dropped), `pause` s apart."""
    latencies, refused = [], []
    for _ in range(count):
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
                connection.sendall(post_request(port, body))
                status, _ = read_answer(connection.makefile("rb"))
        except OSError as e:  # reset, closed, timed out
            status = type(e).__name__
        if status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            refused.append(str(status))
        time.sleep(pause)
    return sorted(latencies), refused


# Hostile loads: each runs in a process of its own (so that its threads do not slow the honest
# client's own measurements) until `stop` is set, on loopback only.

def idle_sockets(port, stop, count, start=b"", every=1.0):
    """`count` connections that send `start` and then nothing (or a byte every `every` seconds, when
    `start` is given), each opened again as soon as the server closes it."""
    sockets = set()
    last_drip = time.monotonic()
    while not stop.is_set():
        while len(sockets) < count and not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(start)
                sockets.add(s)
            except OSError:
                time.sleep(0.01)
        for s in select.select(list(sockets), [], [], 0.05)[0]:  # answered or closed: open another
            sockets.discard(s)
            s.close()
        if start and time.monotonic() - last_drip >= every:
            last_drip = time.monotonic()
            for s in list(sockets):
                try:
                    s.sendall(b"x")
                except OSError:
                    sockets.discard(s)
                    s.close()
    for s in sockets:
        s.close()


def posting(port, stop, count, body, path=b"/predict"):
    """`count` clients, each sending `body` again as soon as it has an answer (any answer),
    reconnecting when the server closes the connection; GET when body is None."""
    request = (post_request(port, body) if body is not None
               else b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port))

    def one():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
                    answers = connection.makefile("rb")
                    while not stop.is_set():
                        connection.sendall(request)
                        read_answer(answers)
            except OSError:  # closed, refused (the server stopped): a pause, not a busy loop
                time.sleep(0.05)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    stop.wait()


def nothing(port, stop):
    stop.wait()


def hostile(name, target, port, seconds, *args):
    """Run one hostile load for `seconds`, the honest client beside it from its second second."""
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=target, args=(port, stop, *args), daemon=True)
    process.start()
    time.sleep(min(2, seconds / 4))  # the load builds up
    end = time.monotonic() + seconds
    latencies, refused = [], []
    body = canvas_png()
    while time.monotonic() < end and len(latencies) + len(refused) < HONEST:
        answered, others = honest(port, body, count=1)
        latencies += answered
        refused += others
    stop.set()
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
    latencies.sort()
    tried = len(latencies) + len(refused)
    figures = (f"p50 {1000 * statistics.median(latencies):7.1f} ms, p95 {1000 * p95(latencies):7.1f} ms"
               if latencies else "no answer")
    print(f"  {name:<62} {figures}; {len(refused)} of {tried} not answered 200"
          + (f" ({', '.join(sorted(set(refused)))})" if refused else ""), flush=True)


def seconds_to_read(body):
    sys.path.insert(0, ROOT)
    from machinery import photo
    import torch

    torch.set_num_threads(1)  # as draw.py reads

    start = time.perf_counter()
    try:
        photo.read_digit(body, 50_000_000)
    except Exception:  # refused is fine: the time is what counts
        pass
    return time.perf_counter() - start


def start_server(checkpoint):
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "draw.py"), checkpoint, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    server.stdout.readline()
    address = server.stdout.readline()
    if not address.startswith("open http://"):
        raise SystemExit(f"error: draw.py did not start: {address.strip()}")
    return server, int(address.split(":")[2].split("/")[0])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint for draw.py")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    p.add_argument("--requests", type=int, default=400, help="requests in each round (default: 400)")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds, for a median (default: 5; 0: none)")
    p.add_argument("--seconds", type=float, default=10, help="most seconds of each hostile load (default: 10)")
    p.add_argument("--only", default="", help="run the hostile loads whose name holds this text (default: all)")
    args = p.parse_args()
    server, port = start_server(args.checkpoint)
    stopped = None
    try:
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
        if rounds:
            median = statistics.median(rounds)
            print(f"median p95 of {args.rounds} rounds: {1000 * median:.1f} ms"
                  + (f"; target < 50 ms: {'met' if median < 0.05 else 'NOT met'}" if args.clients == 8 else ""))

        markers = jpeg_markers(largest_read(jpeg_markers, 1, 1_000_000))  # the slowest image read: 0.6 s
        bmp, drawing, photo = rle_bmp(largest_read(rle_bmp)), serpentine(), photo_png()
        print(f"honest client, one drawing at a time on a new connection, beside each load "
              f"(at most {HONEST} requests or {args.seconds:g} s):", flush=True)
        loads = [
            ("alone", nothing),
            ("70 idle sockets, reopened when dropped", idle_sockets, 70),
            ("70 sockets sending a byte a second", idle_sockets, 70, b"GET / HTTP/1.1\r\nX: "),
            ("70 sockets sending a byte every 50 ms", idle_sockets, 70, b"GET / HTTP/1.1\r\nX: ", 0.05),
            (f"2 clients posting a {len(markers) // 1000} KB JPEG of empty markers "
             f"({seconds_to_read(markers):.2f} s alone)", posting, 2, markers),
            (f"2 clients posting a {len(bmp) // 1000} KB RLE BMP ({seconds_to_read(bmp):.2f} s alone)",
             posting, 2, bmp),
            (f"60 clients posting a {len(drawing)}-byte serpentine ({seconds_to_read(drawing):.2f} s alone)",
             posting, 60, drawing),
            (f"60 clients posting a {len(photo) / 1e6:.1f} MB photo ({seconds_to_read(photo):.2f} s alone)",
             posting, 60, photo),
            ("100 clients getting / in a loop", posting, 100, None),
            ("100 clients posting the drawing in a loop", posting, 100, body),
        ]
        for name, target, *load_args in loads:
            if args.only in name:
                hostile(name, target, port, args.seconds, *load_args)
        if args.only not in "Ctrl-C":
            return
        stopped = ctrl_c(server, port, markers)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGINT)
            server.wait(timeout=120)
    print(f"Ctrl-C after the loads above, with 60 clients posting the JPEG of empty markers: stopped in "
          f"{stopped:.2f} s")
    fresh, port = start_server(args.checkpoint)
    try:
        time.sleep(1)
        print(f"Ctrl-C, fresh: stopped in {ctrl_c(fresh, port):.2f} s")
        fresh, port = start_server(args.checkpoint)
        time.sleep(1)
        print(f"Ctrl-C, fresh, with 60 clients posting the JPEG of empty markers: stopped in "
              f"{ctrl_c(fresh, port, markers):.2f} s")
    finally:
        if fresh.poll() is None:
            fresh.kill()


def ctrl_c(server, port, body=None):
    """Seconds from SIGINT to the end of the server's process, with 60 clients posting `body` (if given)."""
    stop = multiprocessing.Event()
    process = multiprocessing.Process(target=posting, args=(port, stop, 60, body), daemon=True)
    if body is not None:
        process.start()
        time.sleep(2)
    start = time.perf_counter()
    os.kill(server.pid, signal.SIGINT)
    server.wait(timeout=120)
    stopped = time.perf_counter() - start
    stop.set()
    if body is not None:
        process.join(timeout=10)
    return stopped


if __name__ == "__main__":
    main()
