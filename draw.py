"""Draw a digit in the browser and watch the network answer.

    python draw.py                      # the newest run's model.pt, on http://127.0.0.1:8000/
    python draw.py runs/lr0.1-bs64/model.pt --port 8080

Serves machinery/page/ and POST /predict: an image's bytes in (the canvas as PNG, or a photo), JSON
out (the ten probabilities, the digit, the 28x28 image the network saw, the runner-up and each pixel's
evidence), through photo.read_digit as evaluate.py --image goes. The HTTP is waitress's, which reads
each request whole before a thread sees it, its SETTINGS bounding sizes, connections and idle time.
Ours: the Host and Origin check (no other web page may use it), and one thread at most on an image
not known to be quick, so a photo never holds up a drawing. Threat model, figures: docs/draw_server.md.
"""
import base64
import http
import ipaddress
import json
import logging
import os
import sys
import threading

import torch
import waitress
from waitress import channel, parser, wasyncore

import data
from machinery import checkpoint, cli, evidence, photo, runs
from train import DEVICE, RUNS_DIR, THREADS

HOST = "127.0.0.1"  # loopback: only this machine can reach the page
PORT = 8000
MAX_BODY = 4 * 2**20  # bytes; a phone photo is 2-5 MB as JPEG (the page says 4 MB too)
MAX_PIXELS = 50_000_000  # a decoded image costs up to 4 bytes a pixel: bounded per request
QUICK_BYTES = 8 * 2**10  # an image this small, whose header promises a read of under QUICK seconds,
QUICK = 0.02  # is quick and never waits for a slow one; a drawing is 1 KB, 3 ms
SETTINGS = dict(
    threads=2,  # one a core; one of them at most on a slow image, so a drawing always has one
    connection_limit=128,  # open connections; past them new ones wait in the listen queue
    channel_timeout=10, cleanup_interval=1,  # seconds a connection may stay silent, looked at each second
    max_request_header_size=64 * 2**10,  # 431 past it
    max_request_body_size=MAX_BODY + 1,  # 413 from this size on, before the body is read when its length is given
    asyncore_use_poll=True,  # select() fails past 1024 descriptors
    ident="mnist-draw", log_socket_errors=False,  # a client that resets is no news
)
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "machinery", "page")
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/draw.css": ("draw.css", "text/css; charset=utf-8"),
              "/draw.js": ("draw.js", "text/javascript; charset=utf-8")}  # what is served: nothing else


def predict(model, device, body):
    """(status, JSON-able dict) for the bytes of an image."""
    if not body:
        return 400, {"error": "the request has no image in it"}
    try:
        small, x, note = photo.read_digit(body, MAX_PIXELS, data.TRANSFORM)
        probs = photo.classify(model, x, device)
        _, runner_up, pixels = evidence.evidence(model, x.to(device))
    except photo.NoDigit:
        return 400, {"error": "draw a digit first"}
    except photo.TooLarge as e:
        return 413, {"error": str(e)}
    except cli.UserError as e:
        return 400, {"error": str(e)}
    except Exception as e:  # a bug, or an image photo.py did not foresee: an answer all the same, and one line
        print(f"draw.py: could not read an image of {len(body):,} bytes: {e!r}"[:300], file=sys.stderr)
        return 500, {"error": "could not read this image"}
    # JSON has no NaN (the page could not read the answer); the checkpoint's weights are finite, but may overflow
    if not (torch.isfinite(probs).all() and torch.isfinite(pixels).all()):
        return 500, {"error": "this network's outputs are not finite numbers (NaN or infinite): its weights "
                              "are so large that its arithmetic overflows float32"}
    return 200, {"digit": int(probs.argmax()), "probabilities": [round(p, 6) for p in probs.tolist()],
                 "image": "data:image/png;base64," + base64.b64encode(photo.png(small)).decode(), "note": note,
                 "runner_up": runner_up, "evidence": [[float(f"{v:.4g}") for v in row] for row in pixels.tolist()]}


def quick_to_read(body):
    """Whether an image is known to read in under QUICK seconds, from its header; a larger one than
    QUICK_BYTES is not looked at (the header of a 4 MB file may take a while to walk)."""
    return len(body) <= QUICK_BYTES and photo.seconds_to_read(body) < QUICK


def names(host, port):
    """(Host values, Origin values) of this server's own address: 127.0.0.1, localhost, --host."""
    hosts = {name if ":" not in name else f"[{name}]" for name in ("127.0.0.1", "localhost", host.lower())}
    hosts = {f"{name}:{port}" for name in hosts} | (hosts if port == 80 else set())
    return hosts, {f"http://{name}" for name in hosts}


class App:
    """The WSGI application: the page's files, POST /predict, and who may ask."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.hosts, self.origins, self.url = set(), set(), None  # set by make_server, once the port is known
        self.slow = threading.BoundedSemaphore(1)

    def __call__(self, environ, start_response):
        try:
            status, body, kind = self.answer(environ)
        except Exception as e:  # one line, not waitress's traceback
            print(f"draw.py: a request failed: {e!r}"[:300], file=sys.stderr)
            status, body, kind = 500, {"error": "the server failed: see its terminal"}, None
        if kind is None:
            body, kind = json.dumps(body, allow_nan=False).encode(), "application/json"
        headers = [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        if status == 503:
            headers.append(("Retry-After", "1"))
        start_response(f"{status} {http.HTTPStatus(status).phrase}", headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]  # HTTP allows no body there

    def answer(self, environ):
        """(status, bytes or JSON-able, content type or None for JSON) of one request."""
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        host, origin = environ.get("HTTP_HOST", ""), environ.get("HTTP_ORIGIN")  # repeated headers come joined
        if host.lower() not in self.hosts:  # a name of another site pointed at 127.0.0.1: DNS rebinding
            return 403, {"error": f"this server answers requests for {self.url} only (Host: {host[:60]})"}, None
        if method == "POST" and origin is not None and origin.lower() not in self.origins:  # another page
            return 403, {"error": f"only the page of {self.url} may send images here (Origin: {origin[:60]})"}, None
        if method == "GET" and path in PAGE_FILES:
            name, kind = PAGE_FILES[path]
            with open(os.path.join(PAGE, name), "rb") as f:
                return 200, f.read(), kind
        if method == "POST" and path == "/predict":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))  # read by waitress already
            if quick_to_read(body):
                return *predict(self.model, self.device, body), None
            if not self.slow.acquire(blocking=False):  # waiting would hold a thread a drawing may need
                return 503, {"error": "the server is reading another large image: try again in a moment"}, None
            try:
                return *predict(self.model, self.device, body), None
            finally:
                self.slow.release()
        if method in ("GET", "POST"):
            return 404, {"error": f"no page at {path[:100]}"}, None
        return 405, {"error": f"{method[:20]} is not served here: GET the page, POST /predict"}, None


class Parser(parser.HTTPRequestParser):
    """waitress 3.0.2's, with two of its refusals mended: a Content-Length of over 4300 digits (which
    int() refuses) closed the connection unanswered, and "100 Continue" asked for a body too large."""

    def parse_header(self, header_plus):
        try:
            return super().parse_header(header_plus)
        except ValueError:
            raise parser.ParsingError("Content-Length is invalid") from None

    def received(self, data):
        consumed = super().received(data)
        self.expect_continue = self.expect_continue and self.error is None
        return consumed


class Channel(channel.HTTPChannel):
    parser_class = Parser


def make_server(model, device, host=HOST, port=PORT):
    """A waitress server answering the page's files and POST /predict, bound but not yet serving;
    serve(server) serves it, stop(server) ends that from another thread."""
    app = App(model, device)
    server = waitress.create_server(app, host=host, port=port, ipv4=":" not in host, ipv6=":" in host, **SETTINGS)
    server.channel_class = Channel
    server.port = port = int(server.effective_port)  # a text, from getnameinfo
    app.hosts, app.origins = names(host, port)
    shown = "127.0.0.1" if host == "0.0.0.0" else f"[{host}]" if ":" in host else host
    app.url = server.url = f"http://{shown}:{port}/"
    server.stopping = False
    return server


def serve(server):
    """waitress's loop until stop(server) or a signal; then the waiting requests are dropped and
    every connection closed. An image being read is not waited for: its answer could not be sent."""
    log = logging.getLogger("waitress")
    level = log.level
    log.setLevel(logging.ERROR)  # not a line for each queue depth or connection limit reached, under load
    try:
        while not server.stopping:  # server.run() would wait 5 s for them
            wasyncore.loop(timeout=1, map=server._map, use_poll=True, count=1)
    finally:
        server.task_dispatcher.shutdown(timeout=0)
        wasyncore.close_all(server._map, ignore_all=True)
        log.setLevel(level)


def stop(server):
    server.stopping = True
    server.pull_trigger()  # wakes the loop's poll


def main(argv=None):
    p = cli.ArgumentParser(description="Draw a digit in the browser and watch the network answer.")
    p.add_argument("checkpoint", nargs="?", help=f"checkpoint file (default: the newest in {RUNS_DIR}/)")
    p.add_argument("--host", default=HOST, help="address to listen on")
    p.add_argument("--port", type=cli.int_in(0, 65535), default=PORT, help="port to listen on")
    p.add_argument("--device", default=DEVICE, help="auto, cpu, cuda, cuda:N or mps")
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    device = cli.device(args.device)
    path = args.checkpoint or runs.newest_checkpoint(RUNS_DIR)
    ckpt = checkpoint.load(path)
    model = checkpoint.model_from(ckpt, path, device).eval()
    try:
        server = make_server(model, device, args.host, args.port)
    except (OSError, ValueError) as e:  # the port is taken, or the address is not one of this machine
        raise cli.UserError(f"cannot listen on {args.host}:{args.port} ({getattr(e, 'strerror', None) or e}); "
                            "pass another --port or --host") from None
    if not ipaddress.ip_address(server.effective_host).is_loopback:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page",
              file=sys.stderr)
    print(f"model {cli.shown(path)}: {checkpoint.describe(ckpt)}, epoch {ckpt['epoch']}, device {device}",
          *filter(None, [runs.data_py_changed(path)]), sep="\n", flush=True)
    print(f"open {server.url} in a browser (Ctrl-C stops)", flush=True)
    try:
        serve(server)
    except KeyboardInterrupt as stopped:  # Ctrl-C, SIGTERM or SIGHUP: cli.run says which
        raise cli.Stopped.saying(stopped, "the server stopped") from None


if __name__ == "__main__":
    try:
        cli.run(main)
        code = 0
    except SystemExit as done:
        code = done.code
    # Out without the interpreter's teardown: an image still being read in a waitress thread (a
    # daemon) would be cut off inside torch as the interpreter ends, which aborts the process, and
    # collecting torch's objects takes a second or more.
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe: cli.run has said all there is to say
            pass
    os._exit(1 if isinstance(code, str) else code or 0)
