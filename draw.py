"""Draw a digit in the browser and watch the network answer.

    python draw.py                      # the newest run's model.pt, on http://127.0.0.1:8000/
    python draw.py runs/lr0.1-bs64/model.pt --port 8080

Serves the page in page/ (plain HTML, CSS and JavaScript) and one endpoint, POST /predict, which
takes the bytes of an image (the canvas as PNG, or a photo) and answers JSON: the ten
probabilities, the digit, the 28x28 image the network saw, the runner-up, and each pixel's evidence
for the digit against the runner-up (evidence.py). It goes through photo.read_digit,
as evaluate.py --image does, so a drawing and a saved photo of it get the same answer.
Standard library only: serving.py's server, http.server underneath. Ctrl-C or SIGTERM stops it
within a second or two, whatever is queued.

serving.py keeps the server answering its user whatever other clients and web pages do (deadlines,
connections, the work queue, Host and Origin); here is what is served: the page's files, and a
prediction for each image of at most MAX_BODY bytes and MAX_PIXELS pixels.
"""
import base64
import ipaddress
import os
import sys

import torch

import data
from machinery import checkpoint
from machinery import cli
from machinery import evidence
from machinery import photo
from machinery import runs
from machinery import serving
from train import DEVICE, RUNS_DIR, THREADS

HOST = "127.0.0.1"  # loopback: only this machine can reach the page
PORT = 8000
MAX_BODY = 4 * 2**20  # bytes; a phone photo is 2-5 MB as JPEG
MAX_PIXELS = 50_000_000  # a decoded image costs up to 4 bytes a pixel: bounded per request
QUICK_BYTES = 8 * 2**10  # an image this small, whose header promises a read of under QUICK seconds, is
QUICK = 0.02  # quick: no slow image keeps it waiting (serving.SLOW_AT_ONCE); a drawing is 1 KB, 3 ms
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
    return 200, {"digit": int(probs.argmax()), "probabilities": [round(p, 6) for p in probs.tolist()],
                 "image": "data:image/png;base64," + base64.b64encode(photo.png(small)).decode(), "note": note,
                 "runner_up": runner_up, "evidence": [[float(f"{v:.4g}") for v in row] for row in pixels.tolist()]}


def quick_to_read(body):
    """Whether an image is known to read in under QUICK seconds, from its header; a larger one than
    QUICK_BYTES is not looked at (the header of a 4 MB file may take a while to walk)."""
    return len(body) <= QUICK_BYTES and photo.seconds_to_read(body) < QUICK


def make_server(model, device, host=HOST, port=PORT):
    """A serving.Server answering the page's files and POST /predict (not started)."""

    class Handler(serving.Handler):
        def do_GET(self):
            if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                self.close_connection = True  # a body it sent is not read: it must not pass for the next request
            name, content_type = PAGE_FILES.get(self.path.split("?")[0], (None, None))
            if name is None:
                return self.send(404, {"error": f"no page at {self.path[:100]}"})
            with open(os.path.join(PAGE, name), "rb") as f:
                self.send(200, f.read(), content_type)

        def do_POST(self):
            if self.path != "/predict":
                self.close_connection = True  # its body is not read
                return self.send(404, {"error": f"no endpoint at {self.path[:100]}"})
            body = self.read_body(MAX_BODY)
            if body is not None:
                self.answer_in_turn(lambda: predict(model, device, body), len(body), lambda: quick_to_read(body))

    return serving.Server((host, port), Handler)


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
    except OSError as e:
        raise cli.UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                            "pass another --port or --host") from None
    host, port = server.server_address[:2]
    if not ipaddress.ip_address(host).is_loopback:
        print(f"warning: listening on {host}: anyone who can reach this machine can use the page", file=sys.stderr)
    print(f"model {cli.shown(path)}: {checkpoint.describe(ckpt)}, epoch {ckpt['epoch']}, device {device}", flush=True)
    print(f"open {server.url} in a browser (Ctrl-C stops)", flush=True)
    # The threads reading images give up the GIL at each torch call, and wait up to this long to get it
    # back from the connections' threads: beside 30 clients fetching the page, a drawing took 0.34-0.38 s
    # at 5 ms (Python's default), 0.3 s or 0.03 s at 1 ms, 35-54 ms at 0.2 ms; throughput is the same.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        server.serve_forever()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP: cli.run says which
        raise cli.Stopped.saying(stop, "the server stopped") from None
    finally:
        server.server_close()
        sys.setswitchinterval(switch_interval)


if __name__ == "__main__":
    try:
        cli.run(main)
        code = 0
    except SystemExit as done:
        code = done.code
    # Out without the interpreter's teardown: collecting torch's objects takes a second or more, and
    # an image still being read when Ctrl-C came would be cut off inside torch, which aborts the process.
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe: cli.run has said all there is to say
            pass
    os._exit(1 if isinstance(code, str) else code or 0)
