"""Draw a digit in the browser and watch the network answer.

    python draw.py                      # the newest run's model.pt, on http://127.0.0.1:8000/
    python draw.py runs/lr0.1-bs64/model.pt --port 8080

Serves the page in page/ (plain HTML, CSS and JavaScript) and one endpoint, POST /predict, which
takes the bytes of an image (the canvas as PNG, or a photo) and answers JSON: the ten
probabilities, the digit, and the 28x28 image the network saw. It goes through photo.read_digit,
as evaluate.py --image does, so a drawing and a saved photo of it get the same answer.
Standard library only: http.server's ThreadingHTTPServer. Ctrl-C stops it.

Whatever clients send, memory and threads stay bounded: a request must arrive whole within TIMEOUT
seconds however slowly it trickles in, its request line and headers within MAX_HEAD bytes, its body
within MAX_BODY; at most MAX_CONNECTIONS connections are served at once, the next get a 503 at once.
"""
import base64
import concurrent.futures
import io
import ipaddress
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import checkpoint
import cli
import photo
import runs
from train import DEVICE, RUNS_DIR, THREADS

HOST = "127.0.0.1"  # loopback: only this machine can reach the page
PORT = 8000
MAX_BODY = 4 * 2**20  # bytes; a phone photo is 2-5 MB as JPEG
MAX_PIXELS = 50_000_000  # a decoded image costs up to 4 bytes a pixel: bounded per request
AT_ONCE = 2  # threads that read images (one a core): memory stays bounded under any load
TIMEOUT = 10  # seconds a client may take to send a whole request: request line, headers and body
MAX_HEAD = 64 * 2**10  # bytes of request line and headers together (http.server alone takes ~6 MB)
MAX_CONNECTIONS = 64  # served at once, a thread each; beyond them a connection gets 503 and no thread
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/draw.css": ("draw.css", "text/css; charset=utf-8"),
         "/draw.js": ("draw.js", "text/javascript; charset=utf-8")}  # what is served: nothing else


class HeadTooLarge(Exception):
    """The request line and headers are more than MAX_HEAD bytes."""


class RequestReader(io.RawIOBase):
    """A connection's socket, read against one deadline per request. The time left is the timeout of
    each read: a client sending a byte every few seconds runs out of time all the same."""

    def __init__(self, sock):
        self.sock, self.deadline = sock, 0.0

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request took more than {TIMEOUT} s")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class RequestFile(io.BufferedReader):
    """A handler's rfile: RequestReader, buffered. readline, which http.server uses for the request
    line and headers only (a body is read with read), stops at MAX_HEAD bytes a request."""
    head_left = 0

    def start(self):
        """A new request: its deadline starts now, and its head may take MAX_HEAD bytes."""
        self.raw.deadline = time.monotonic() + TIMEOUT
        self.head_left = MAX_HEAD

    def readline(self, size=-1):
        if self.head_left <= 0:
            raise HeadTooLarge
        line = super().readline(self.head_left if size < 0 else min(size, self.head_left))
        self.head_left -= len(line)
        return line


def predict(model, device, body):
    """(status, JSON-able dict) for the bytes of an image."""
    if not body:
        return 400, {"error": "the request has no image in it"}
    try:
        small, x, note = photo.read_digit(body, MAX_PIXELS)
        probs = photo.classify(model, x, device)
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
                 "image": "data:image/png;base64," + base64.b64encode(photo.png(small)).decode(), "note": note}


def make_server(model, device, host=HOST, port=PORT):
    """A ThreadingHTTPServer answering the page's files and POST /predict (not started)."""
    # The images are read by AT_ONCE threads of their own, in the order the requests came: under
    # load no request waits longer than its turn, which a semaphore does not promise.
    readers = concurrent.futures.ThreadPoolExecutor(AT_ONCE, thread_name_prefix="reader")

    class Handler(BaseHTTPRequestHandler):
        server_version = "mnist-draw"
        protocol_version = "HTTP/1.1"  # keep-alive: the page sends many requests
        # An answer to a request line too broken to name its version still starts with a status
        # line (http.server would send the bare body, as HTTP/0.9 did).
        default_request_version = "HTTP/1.0"
        disable_nagle_algorithm = True  # else each answer waits ~40 ms for the client's delayed ACK

        def setup(self):
            super().setup()
            self.rfile.close()  # http.server's, replaced by one that keeps the deadline and MAX_HEAD
            self.rfile = RequestFile(RequestReader(self.connection))

        def handle_one_request(self):
            """http.server's, with the deadline and MAX_HEAD, and 405 for any method not served."""
            self.rfile.start()
            self.command, self.requestline, self.request_version = None, "", self.default_request_version
            self.wants_continue = False
            try:
                self.raw_requestline = self.rfile.readline()
                if not self.raw_requestline:  # the client closed the connection
                    self.close_connection = True
                    return
                if self.rfile.head_left <= 0:
                    return self.send_error(414, f"the request line is longer than {MAX_HEAD // 2**10} KB")
                if not self.parse_request():  # which has answered
                    return
            except HeadTooLarge:
                return self.send_error(431, f"the request line and headers are more than {MAX_HEAD // 2**10} KB")
            except TimeoutError:  # half a request, or none yet on a kept-alive connection: dropped
                self.close_connection = True
                return
            getattr(self, "do_" + self.command, self.refuse_method)()
            self.wfile.flush()

        def send(self, status, body, content_type="application/json", headers=()):
            """One answer; to HEAD, its status and headers only (HTTP allows no body there)."""
            if content_type == "application/json":
                body = json.dumps(body).encode()
            self.connection.settimeout(TIMEOUT)  # a client that does not take its answer is dropped too
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")  # the client knows not to send another request
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send_error(self, code, message=None, explain=None):
            """http.server's own refusals (a broken request line, HTTP/2.0, 101 headers) in JSON too."""
            self.close_connection = True  # what follows a refused request may not be a request
            self.send(code, {"error": (message or self.responses.get(code, ("refused",))[0])[:200]})

        def handle_expect_100(self):  # parse_request's: "100 Continue" waits until do_POST has checked the size
            self.wants_continue = True
            return True

        def do_GET(self):
            if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                self.close_connection = True  # a body it sent is not read: it must not pass for the next request
            name, content_type = PAGE_FILES.get(self.path.split("?")[0], (None, None))
            if name is None:
                return self.send(404, {"error": f"no page at {self.path[:100]}"})
            with open(os.path.join(PAGE, name), "rb") as f:
                self.send(200, f.read(), content_type)

        def do_POST(self):
            # Kept alive only once its body is read: unread bytes would pass for the next request.
            asked_to_close, self.close_connection = self.close_connection, True
            if self.path != "/predict":
                return self.send(404, {"error": f"no endpoint at {self.path[:100]}"})
            lengths = self.headers.get_all("Content-Length", [])
            if lengths and "Transfer-Encoding" in self.headers:  # each side could end the body elsewhere
                return self.send(400, {"error": "send a Content-Length or a Transfer-Encoding, not both"})
            if not lengths:
                return self.send(411, {"error": "send the image with a Content-Length"})
            if len(lengths) > 1:
                return self.send(400, {"error": "send one Content-Length"})
            if not (lengths[0].isascii() and lengths[0].isdigit()):  # int() takes -1, +1, 1_000 too
                return self.send(400, {"error": f"the Content-Length {lengths[0][:20]!r} is not a number of bytes"})
            length = int(lengths[0])
            if length > MAX_BODY:  # refused before reading a byte of it, or asking for it
                return self.send(413, {"error": f"{length:,} bytes is more than {MAX_BODY // 2**20} MB"})
            if self.wants_continue:  # the client waits for this before it sends the body
                self.send_response_only(100)
                self.end_headers()
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                return self.send(408, {"error": "the image did not arrive in time"})
            if len(body) < length:
                return  # the client went away
            self.close_connection = asked_to_close
            self.send(*readers.submit(predict, model, device, body).result())

        def refuse_method(self):  # any method but GET and POST: HEAD, PUT, TRACE, get, BREW...
            self.close_connection = True  # its body, if any, is not read
            self.send(405, {"error": f"{self.command[:20]} is not served here: GET the page, POST /predict"},
                      headers=[("Allow", "GET, POST")])

        def log_message(self, format, *args):  # no line per request: the terminal stays readable
            pass

    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)  # one for each connection being served
    busy = json.dumps({"error": "the server is busy: try again in a moment"}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(busy), busy))

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 resets clients when many connect at once

        def process_request(self, request, client_address):
            if not slots.acquire(blocking=False):  # all taken: answered at once, with no thread of its own
                request.setblocking(False)  # this is the thread that accepts: it never waits on a client
                try:
                    request.sendall(busy)
                except OSError:
                    pass
                return self.shutdown_request(request)
            try:
                super().process_request(request, client_address)  # starts a thread for it
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

        def handle_error(self, request, client_address):
            """One line for an unexpected error, not socketserver's traceback; a client that went away
            (reset, broken pipe, out of time) is no news and says nothing."""
            error = sys.exc_info()[1]
            if not isinstance(error, (ConnectionError, TimeoutError)):
                print(f"draw.py: a request from {client_address[0]} failed: {error!r}"[:300], file=sys.stderr)

        def server_close(self):
            super().server_close()
            readers.shutdown()

    return Server((host, port), Handler)


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
    print(f"model {path}: {checkpoint.describe(ckpt)}, epoch {ckpt['epoch']}, device {device}", flush=True)
    print(f"open http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ in a browser (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP: cli.run says which
        raise cli.Stopped.saying(stop, "the server stopped") from None
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run(main)
