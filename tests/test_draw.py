"""draw.py over real HTTP on a free loopback port: what the page and docs/draw_server.md promise.
Answers from drawings and real digits; other web pages refused (Host, every Origin); malformed and
oversized requests a 4xx; every answer one the page can show (no NaN); one thread at most on a
slow image, so a drawing is answered meanwhile; Ctrl-C and SIGTERM within a second or two.

Every socket here has a timeout, and whatever waits on the server waits on an event it causes (an
answer, a closed connection, an image reaching draw.predict) rather than on a sleep."""
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image, ImageDraw

from machinery import checkpoint
import data
from model import Net
import draw
import evaluate
from machinery import evidence
from machinery import photo
from conftest import ROOT, huge_png, main_error


@pytest.fixture(scope="module")
def server(trained):
    """A draw.py server in this process, on a free port, with the small two-epoch model."""
    out, _ = trained
    with serve(out / "model.pt") as port_and_server:
        yield port_and_server


@contextlib.contextmanager
def serve(path, host="127.0.0.1"):
    """(port, server) of a draw.py server running in this process until the block ends. It reads
    draw.SETTINGS when it is made: a test that changes them (with monkeypatch) starts its own."""
    model = checkpoint.model_from(checkpoint.load(str(path)), str(path)).eval()
    httpd = draw.make_server(model, torch.device("cpu"), host, 0)
    thread = threading.Thread(target=draw.serve, args=(httpd,), daemon=True)
    thread.start()
    try:
        yield httpd.port, httpd
    finally:
        draw.stop(httpd)
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop within 30 s"


class Held:
    """draw.predict held back until the block ends (or release()): `bodies` are the images it was
    given, in order, and started(n) waits until n of them have reached it. Only the images for which
    holds(body) is true are held and counted; the others are read at once."""

    def __init__(self, monkeypatch, holds=lambda body: True):
        self.bodies, self.arrived, self.gate = [], threading.Semaphore(0), threading.Event()
        real = draw.predict

        def held(model, device, body):
            if not holds(body):
                return real(model, device, body)
            self.bodies.append(body)
            self.arrived.release()
            assert self.gate.wait(60), "held for a minute: the test gave up"
            return real(model, device, body)

        monkeypatch.setattr(draw, "predict", held)

    def started(self, n=1):
        for _ in range(n):
            assert self.arrived.acquire(timeout=30), f"{len(self.bodies)} images reached draw.predict, not {n}"

    def release(self):
        self.gate.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()  # before the server closes: its threads end


def request(port, method, path, body=None, headers=None):
    """(status, JSON or bytes) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(payload) if kind == "application/json" else payload


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def stroke_one():
    """What the page sends for a '1': one vertical black stroke on the white 256x256 canvas (RGBA)."""
    canvas = Image.new("RGBA", (256, 256), "white")
    ImageDraw.Draw(canvas).line([(128, 46), (124, 210)], fill="black", width=16)
    return png(canvas)


def noisy_photo(side=300):
    """A 1 on grey paper with noise: over QUICK_BYTES, so not known to be quick."""
    paper = Image.frombytes("L", (side, side), os.urandom(side * side)).point(lambda v: 150 + v // 4)
    ImageDraw.Draw(paper).line([(side // 2, side // 6), (side // 2, 5 * side // 6)], fill=0, width=side // 12)
    return png(paper)


PNG = stroke_one()
HOST = b"Host: 127.0.0.1:PORT\r\n"  # exchange() puts the server's port in
POST = b"POST /predict HTTP/1.1\r\n" + HOST


def post(port, body=PNG, extra=b""):
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %d\r\n\r\n%s"
            % (port, extra, len(body), body))


def test_the_page_and_its_files_are_served(server):
    port, _ = server
    status, page = request(port, "GET", "/")
    assert status == 200 and b'<canvas id="pad"' in page and b'src="/draw.js"' in page
    for name in ("/draw.js", "/draw.css"):
        status, body = request(port, "GET", name)
        with open(os.path.join(ROOT, "machinery", "page", name[1:]), "rb") as f:
            assert status == 200 and body == f.read()


def test_the_page_refuses_what_the_server_would(server):
    """The page does not send a photo over draw.MAX_BODY: it says so itself."""
    with open(os.path.join(ROOT, "machinery", "page", "draw.js")) as f:
        script = f.read()
    assert draw.MAX_BODY == 4 * 2**20 and "const MAX_BYTES = 4 * 1024 * 1024;" in script
    assert "more than 4 MB" in script


def test_a_prediction_is_the_same_as_evaluate_image_gives(server, trained, tmp_path, capsys):
    """The server's digit and top probability are those `python evaluate.py CKPT --image PATH` prints."""
    port, _ = server
    out, _ = trained
    status, answer = request(port, "POST", "/predict", stroke_one(), {"Content-Type": "image/png"})
    assert status == 200 and set(answer) == {"digit", "probabilities", "image", "note", "runner_up", "evidence"}
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)
    seen = Image.open(io.BytesIO(base64.b64decode(answer["image"].removeprefix("data:image/png;base64,"))))
    assert seen.format == "PNG" and seen.mode == "L" and seen.size == (28, 28)

    drawing = tmp_path / "one.png"
    drawing.write_bytes(stroke_one())
    capsys.readouterr()
    evaluate.main([str(out / "model.pt"), "--image", str(drawing), "--device", "cpu"])
    printed = capsys.readouterr().out
    line = re.search(rf"^{re.escape(str(drawing))}: (\d) \(([\d.]+)%\)  top 3: (\d) [\d.]+%, (\d) [\d.]+%, (\d) ",
                     printed, re.MULTILINE)
    assert line, printed
    assert answer["digit"] == int(line[1])
    assert 100 * max(answer["probabilities"]) == pytest.approx(float(line[2]), abs=0.05 + 1e-4)  # printed to .1f
    top3 = sorted(range(10), key=lambda d: -answer["probabilities"][d])[:3]
    assert [int(d) for d in line.groups()[2:]] == top3, (printed, answer["probabilities"])
    # why: the evidence of the image the network saw, for its digit against the runner-up (evidence.py)
    model = checkpoint.model_from(checkpoint.load(str(out / "model.pt")), "model.pt")
    digit, runner_up, pixels = evidence.evidence(model, photo.read_digit(stroke_one())[1])
    assert (answer["digit"], answer["runner_up"]) == (digit, runner_up) == (top3[0], top3[1])
    assert torch.allclose(torch.tensor(answer["evidence"]), pixels, rtol=1e-3, atol=1e-7)


def test_drawn_one_and_a_real_test_digit_are_read_right(real_run, real_mnist):
    out, _ = real_run
    with serve(out / "model.pt") as (port, _):
        status, answer = request(port, "POST", "/predict", stroke_one())
        assert status == 200 and answer["digit"] == 1, answer
        test_set = data.load_mnist(real_mnist, train=False)
        digit = Image.fromarray(test_set.data[0].numpy(), mode="L")
        status, answer = request(port, "POST", "/predict", png(digit))
        assert status == 200 and answer["digit"] == test_set.targets[0].item() == 7, answer


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/predict", b"", 400, "no image"),
    ("POST", "/predict", b"hello, not an image", 400, "not an image that PIL can read"),
    ("POST", "/predict", png(Image.new("RGBA", (256, 256), "white")), 400, "draw a digit first"),
    ("PUT", "/predict", b"x", 405, "PUT is not served here"),
    ("DELETE", "/", None, 405, "DELETE is not served here"),
    ("GET", "/nothing", None, 404, "no page at /nothing"),
    ("GET", "/../README.md", None, 404, "no page at"),
    ("GET", "/draw.js/../../train.py", None, 404, "no page at"),
    ("POST", "/elsewhere", b"x", 404, "no page at /elsewhere"),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, method, path, body, status, message):
    port, _ = server
    got, answer = request(port, method, path, body)
    assert got == status and message in answer["error"], answer
    assert request(port, "POST", "/predict", stroke_one())[0] == 200


def test_a_decompression_bomb_is_refused(server, tmp_path):
    port, _ = server
    huge_png(tmp_path / "bomb.png", side=8000)  # 64 megapixels in 200 KB
    status, answer = request(port, "POST", "/predict", (tmp_path / "bomb.png").read_bytes())
    assert status == 413 and "is more than this reads (50 megapixels)" in answer["error"]


def test_a_connection_is_kept_for_the_next_drawing(server):
    """The page sends a request every few strokes: HTTP/1.1 keep-alive, one connection for all."""
    port, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    for _ in range(3):
        connection.request("POST", "/predict", body=stroke_one())
        response = connection.getresponse()
        answers.append((response.status, json.loads(response.read())["digit"], connection.sock))
    connection.close()
    assert [a[:2] for a in answers] == [(200, answers[0][1])] * 3 and answers[0][2] is answers[2][2] is not None


def test_50_concurrent_requests_are_all_answered(server):
    port, _ = server
    body = stroke_one()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: request(port, "POST", "/predict", body), range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert len({json.dumps(answer["probabilities"]) for _, answer in results}) == 1


# Raw HTTP: what http.client would not send, read as it comes.

def exchange(port, raw, timeout=10):
    """The server's whole reply to `raw` (HOST given the port), sent on a new connection: read until
    the server closes it, each read within `timeout` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw.replace(b"PORT", b"%d" % port))
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:  # closed with bytes of ours unread: what it sent has come all the same
            pass
    return reply


def parse(reply):
    """(status, {lowercase header: value}, body) of one reply."""
    assert re.match(rb"HTTP/1\.[01] ", reply), reply[:300]
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return int(status.split()[1]), {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def answer_on(s):
    """(status, JSON or bytes, headers) of the next answer on an open socket (which has a timeout)."""
    response = http.client.HTTPResponse(s)
    response.begin()
    body = response.read()
    return response.status, json.loads(body) if response.getheader("Content-Type") == "application/json" else body, \
        response.headers


ANOTHER_PAGE = {  # other web pages in the user's browser, and names pointed at 127.0.0.1: a JSON 403
    "no Host": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "Host elsewhere": b"GET / HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n",
    "Host rebound to 127.0.0.1": b"POST /predict HTTP/1.1\r\nHost: attacker.example:PORT\r\nConnection: close\r\n"
                                 b"Content-Length: 3\r\n\r\nabc",
    "Host with another port": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\n" + HOST + HOST + b"Connection: close\r\n\r\n",
    "POST from another site": POST + b"Origin: https://attacker.example\r\n",
    "POST from a sandboxed page": POST + b"Origin: null\r\n",
    "a second Origin after the server's own": POST + b"Origin: http://127.0.0.1:PORT\r\nOrigin: http://evil\r\n",
    "a second origin, in lowercase": POST + b"Origin: http://127.0.0.1:PORT\r\norigin: http://evil\r\n",
    "a second Origin before the server's own": POST + b"Origin: http://evil\r\nOrigin: http://127.0.0.1:PORT\r\n",
}


@pytest.mark.parametrize("raw", ANOTHER_PAGE.values(), ids=ANOTHER_PAGE.keys())
def test_other_web_pages_are_refused_with_a_json_403(server, raw):
    port, _ = server
    if raw.startswith(POST):  # a whole request, with a drawing that would be answered but for the Origin
        raw += b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(PNG), PNG)
    status, headers, body = parse(exchange(port, raw))
    assert status == 403 and headers["content-type"] == "application/json", body
    assert "only" in json.loads(body)["error"]
    assert request(port, "POST", "/predict", PNG)[0] == 200


MALFORMED = {  # waitress's own refusals (plain text: the page shows them as what they mean), and ours
    "garbage request line": (b"GARBAGE\r\n\r\n", 400),
    "Content-Length -1": (POST + b"Content-Length: -1\r\n\r\n", 400),
    "Content-Length 1_000": (POST + b"Content-Length: 1_000\r\n\r\n" + b"x" * 1000, 400),
    "Content-Length many": (POST + b"Content-Length: many\r\n\r\n", 400),
    "two Content-Lengths": (POST + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "Content-Length of 20 MB, body not sent": (POST + b"Content-Length: 20971520\r\n\r\n", 413),
    "Content-Length of 5000 digits": (POST + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
    "100-continue for 20 MB": (POST + b"Content-Length: 20971520\r\nExpect: 100-continue\r\n\r\n", 413),
    "chunked body over 4 MB": (POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"x" * 2**20 + b"\r\n"
                               + b"400000\r\n" + b"x" * 2**22 + b"\r\n0\r\n\r\n", 413),
    "104 KB of headers": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1300) for i in range(80))
                          + b"\r\n", 431),
    "TRACE": (b"TRACE / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", 405),
    "lowercase get": (b"get / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", 400),
    "HEAD": (b"HEAD / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", 405),
}


@pytest.mark.parametrize("raw, status", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_and_oversized_requests_get_a_4xx_and_the_server_goes_on(server, raw, status):
    port, _ = server
    reply = exchange(port, raw)
    assert b"100 Continue" not in reply  # a body that is refused is not asked for
    got, headers, body = parse(reply)
    assert got == status and int(headers["content-length"]) >= len(body), reply[:300]
    if raw.startswith(b"HEAD"):
        assert body == b""
    assert request(port, "POST", "/predict", PNG)[0] == 200


@pytest.mark.parametrize("host, origin", [("127.0.0.1:PORT", None), ("localhost:PORT", "http://localhost:PORT"),
                                          ("LOCALHOST:PORT", "http://127.0.0.1:PORT"),
                                          ("127.0.0.2:PORT", "http://127.0.0.2:PORT")])
def test_the_names_of_the_server_and_its_own_page_are_answered(trained, host, origin):
    """127.0.0.1, localhost and the --host given (here 127.0.0.2, loopback too), with the port; a
    POST with no Origin is from a client that is not a browser."""
    with serve(trained[0] / "model.pt", host="127.0.0.2") as (port, _):
        headers = [f"Host: {host}", f"Origin: {origin}"] if origin else [f"Host: {host}"]
        head = "".join(f"{h}\r\n" for h in headers).replace("PORT", str(port)).encode()
        with socket.create_connection(("127.0.0.2", port), timeout=30) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\n" + head + b"Content-Length: %d\r\n\r\n%s" % (len(PNG), PNG))
            status, answer, _ = answer_on(s)
        assert status == 200 and "digit" in answer, answer


def test_a_client_that_half_closes_after_its_post_gets_its_answer(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(post(port))
        s.shutdown(socket.SHUT_WR)  # nothing more will come: curl --data, some proxies
        status, answer, _ = answer_on(s)
    assert status == 200 and "digit" in answer, answer


def test_a_network_whose_outputs_overflow_is_refused_and_never_answers_nan(trained, tmp_path):
    """Finite weights (each one valid) whose products overflow float32: softmax gives NaN, which JSON cannot
    carry (the page could not read the answer). The checkpoint's gate refuses them before serving; should
    a network overflow on some image all the same, predict answers an error, never NaN."""
    ckpt = torch.load(trained[0] / "model.pt", weights_only=True)
    ckpt["model"]["fc2.weight"].fill_(3e38)
    torch.save(ckpt, tmp_path / "overflow.pt")
    assert "its network's outputs overflow (they are not finite numbers)" in main_error(draw, tmp_path / "overflow.pt")
    model = Net()
    model.load_state_dict(ckpt["model"])
    status, answer = draw.predict(model.eval(), torch.device("cpu"), PNG)
    json.dumps(answer, allow_nan=False)
    assert status == 500 and "not finite numbers" in answer["error"], answer


def test_a_drawing_is_answered_while_a_slow_image_is_read_and_a_second_slow_one_waits_for_no_thread(
        server, monkeypatch):
    """Two threads: one at most on an image not known to be quick; the other is kept for drawings.
    A second slow image while the first is read is told to come again (503), holding no thread."""
    port, _ = server
    photo_bytes = noisy_photo()
    assert not draw.quick_to_read(photo_bytes) and draw.quick_to_read(PNG)
    with Held(monkeypatch, holds=lambda body: body == photo_bytes) as held:
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        first.sendall(post(port, photo_bytes))
        held.started()  # the photo is being read
        second = socket.create_connection(("127.0.0.1", port), timeout=30)
        second.sendall(post(port, photo_bytes))
        for _ in range(3):  # at once, not once the second photo has given up waiting for the first
            start = time.monotonic()
            status, answer = request(port, "POST", "/predict", PNG)
            assert status == 200 and "digit" in answer and time.monotonic() - start < 3
        status, answer, _ = answer_on(second)
        second.close()
        assert status == 503 and "another large image" in answer["error"], answer
        held.release()
        status, answer, headers = answer_on(first)
        first.close()
    assert status == 200 and len(held.bodies) == 1
    assert request(port, "POST", "/predict", photo_bytes)[0] == 200  # the place is free again


def test_a_connection_that_sends_nothing_is_closed(trained, monkeypatch):
    monkeypatch.setitem(draw.SETTINGS, "channel_timeout", 1)
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            start = time.monotonic()
            assert s.recv(100) == b""  # closed, with no answer
        assert time.monotonic() - start < 10


def test_listening_beyond_loopback_warns_and_a_taken_port_is_one_line(trained, server, monkeypatch, capsys):
    out, _ = trained
    port, _ = server
    assert main_error(draw, out / "model.pt", "--port", port).startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert main_error(draw, out / "model.pt", "--host", "no-such-host.invalid").startswith("error: cannot listen on")
    made, serving_now = [], threading.Event()  # draw.main's server, to stop it from here as Ctrl-C would

    def make(*args, make_server=draw.make_server):
        httpd = make_server(*args)
        made.append(httpd)
        serving_now.set()
        return httpd

    monkeypatch.setattr(draw, "make_server", make)
    capsys.readouterr()
    main = threading.Thread(target=draw.main, args=([str(out / "model.pt"), "--host", "0.0.0.0", "--port", "0"],))
    main.start()
    assert serving_now.wait(timeout=60)
    draw.stop(made[0])
    main.join(timeout=30)
    printed, warned = capsys.readouterr()
    assert "open http://127.0.0.1:" in printed and not main.is_alive()
    assert warned.splitlines()[0] == "warning: listening on 0.0.0.0: anyone who can reach this machine can use the page"


def test_an_unexpected_error_in_a_handler_is_a_500_and_one_line(server, monkeypatch, tmp_path, capfd):
    port, _ = server
    monkeypatch.setattr(draw, "PAGE", str(tmp_path / "gone"))  # the page's files went missing
    capfd.readouterr()
    status, answer = request(port, "GET", "/")
    assert status == 500 and "error" in answer
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "FileNotFoundError" in err, err
    monkeypatch.undo()
    assert request(port, "GET", "/")[0] == 200


def test_an_unexpected_error_reading_an_image_is_a_500_and_one_line(server, monkeypatch, capfd):
    port, _ = server

    def broken(*args):
        raise RuntimeError("a bug in photo.py\nover two lines")

    monkeypatch.setattr(photo, "read_digit", broken)
    capfd.readouterr()
    status, answer = request(port, "POST", "/predict", PNG)
    assert status == 500 and answer == {"error": "could not read this image"}
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "RuntimeError" in err, err
    monkeypatch.undo()
    assert request(port, "POST", "/predict", PNG)[0] == 200


def test_clients_that_reset_before_the_answer_leave_no_traceback(trained, monkeypatch, capfd):
    linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, not a goodbye
    with serve(trained[0] / "model.pt") as (port, _), Held(monkeypatch) as held:
        capfd.readouterr()
        for whole in (True, False) * 2:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.sendall(post(port) if whole else post(port)[:200])
            if whole:
                held.started()  # read, and being answered
            s.close()
        held.release()
        assert request(port, "POST", "/predict", PNG)[0] == 200
    err = capfd.readouterr().err  # the server is closed: its threads have said all they will
    assert "Traceback" not in err and err == "", err


# The command: its address, and Ctrl-C or SIGTERM at any time.

SLOW_READER = """
import os, sys, time, torch
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[2:]  # draw.py and its arguments
import runpy
from machinery import photo
def slow(*args):  # an image that would be read for a minute, in torch all along
    os.write(1, b"reading\\n")  # one write: the two threads' lines do not mix
    end = time.monotonic() + 60
    while time.monotonic() < end:
        torch.rand(64, 64).sum()
photo.read_digit = slow
runpy.run_path(sys.argv[0], run_name="__main__")
"""

STOPPED_WITHIN = 2.5  # seconds from the signal to the process's end: "a second or two", and a little room


def start_draw(checkpoint_path, slow_reads=False):
    """(process, port) of `python draw.py CHECKPOINT --port 0`, once it has printed its address;
    with slow_reads, every image is read for a minute (photo.read_digit made slow)."""
    args = (["-c", SLOW_READER, ROOT] if slow_reads else []) + [os.path.join(ROOT, "draw.py"), str(checkpoint_path),
                                                                "--port", "0"]
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT,
                                                                                             signal.SIGTERM)])
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while len(lines) < 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"draw.py printed {lines} in 120 s; stderr: {proc.communicate(timeout=30)[1][-2000:]}")
        time.sleep(0.05)
    assert lines[0].startswith(f"model {checkpoint_path}: Net(fc1: Linear(784, 64), activation: Sigmoid(), "), lines
    assert lines[1].startswith("open http://127.0.0.1:") and lines[1].endswith("/ in a browser (Ctrl-C stops)\n")
    return proc, int(lines[1].split(":")[2].split("/")[0]), lines


def loads(port, seconds):
    """What the benchmark throws at the server, in small: 70 idle sockets, 20 trickling, 20 clients
    posting photos and drawings in a loop, for `seconds`; the sockets, still open."""
    stop, sockets = threading.Event(), [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(90)]
    for s in sockets[70:]:
        s.sendall(b"GET / HTTP/1.1\r\nX: ")
    photo_bytes = noisy_photo()

    def client(body):
        with contextlib.suppress(OSError):
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(post(port, body))
                    answer_on(s)

    threads = [threading.Thread(target=client, args=(body,), daemon=True) for body in [photo_bytes, PNG] * 10]
    for thread in threads:
        thread.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in sockets[70:]:
            s.send(b"x")
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(30)
    return sockets


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("signum, when", [(signal.SIGINT, "fresh"), (signal.SIGTERM, "fresh"),
                                          (signal.SIGINT, "images being read"), (signal.SIGTERM, "images being read"),
                                          (signal.SIGINT, "after loads")])
def test_ctrl_c_and_sigterm_stop_the_server_within_two_seconds(trained, signum, when):
    """Fresh; with both threads inside torch for a minute and ten more images waiting; and once the
    loads of the benchmark, in small, have run (the old server then took over a minute)."""
    proc, port, lines = start_draw(trained[0] / "model.pt", slow_reads=when == "images being read")
    sockets = []
    try:
        assert request(port, "GET", "/")[0] == 200
        if when == "images being read":
            sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]
            for s in sockets:
                s.sendall(post(port))
            deadline = time.monotonic() + 30
            while lines.count("reading\n") < 2:  # both threads are in torch
                assert time.monotonic() < deadline, lines
                time.sleep(0.01)
        elif when == "after loads":
            sockets = loads(port, seconds=3)
            assert request(port, "POST", "/predict", PNG)[0] == 200
        start = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=30)
        took = time.monotonic() - start
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for s in sockets:
            s.close()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum and stderr.strip() == f"interrupted ({name}): the server stopped", stderr
    assert took < STOPPED_WITHIN, f"{took:.2f} s from {name} to the end"
