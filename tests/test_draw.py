"""draw.py over real HTTP on a free loopback port: answers from drawings and real digits, every
kind of bad request answered with the right status while the server keeps serving, and the server
still serving its user while other clients and web pages try to stop it (serving.py).

Every socket here has a timeout, and whatever waits on the server waits on an event it causes (an
answer, a closed connection, an image reaching draw.predict) rather than on a sleep."""
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import queue
import re
import select
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
import draw
import evaluate
from machinery import evidence
from machinery import photo
from machinery import serving
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
    serving's constants when it is made: a test that changes one (with monkeypatch) starts its own."""
    model = checkpoint.model_from(checkpoint.load(str(path)), str(path)).eval()
    httpd = draw.make_server(model, torch.device("cpu"), host, 0)
    httpd.daemon_threads = False  # so that server_close waits for the threads of its connections
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], httpd
    finally:
        httpd.shutdown()
        httpd.server_close()  # then all they print is printed


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


def wait_until(condition, what, seconds=30):
    """Poll the server's own state (not a clock): fail if `condition` does not hold within `seconds`."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"not {what} within {seconds} s"
        time.sleep(0.01)


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


PNG = stroke_one()
HOST = b"Host: 127.0.0.1:PORT\r\n"  # exchange() puts the server's port in
POST = b"POST /predict HTTP/1.1\r\n" + HOST  # the start of a request, for those sent byte by byte


def test_the_page_and_its_files_are_served(server):
    port, _ = server
    status, page = request(port, "GET", "/")
    assert status == 200 and b'<canvas id="pad"' in page and b'src="/draw.js"' in page
    for name in ("/draw.js", "/draw.css"):
        status, body = request(port, "GET", name)
        with open(os.path.join(ROOT, "machinery", "page", name[1:]), "rb") as f:
            assert status == 200 and body == f.read()


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


@pytest.mark.parametrize("method, path, body, headers, status, message", [
    ("POST", "/predict", b"", {}, 400, "no image"),
    ("POST", "/predict", b"hello, not an image", {}, 400, "not an image that PIL can read"),
    ("POST", "/predict", png(Image.new("RGBA", (256, 256), "white")), {}, 400, "draw a digit first"),
    ("PUT", "/predict", b"x", {}, 405, "PUT is not served here"),
    ("DELETE", "/", None, {}, 405, "DELETE is not served here"),
    ("GET", "/nothing", None, {}, 404, "no page at /nothing"),
    ("GET", "/../README.md", None, {}, 404, "no page at"),
    ("GET", "/draw.js/../../train.py", None, {}, 404, "no page at"),
    ("POST", "/elsewhere", b"x", {}, 404, "no endpoint at /elsewhere"),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(server, method, path, body, headers, status, message):
    port, _ = server
    got, answer = request(port, method, path, body, headers)
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
        s.sendall(raw.replace(HOST, HOST.replace(b"PORT", b"%d" % port), 1))
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:  # closed with bytes of ours unread: what it sent has come all the same
            pass
    return reply


def parse(reply):
    """(status, {lowercase header: value}, body) of one reply."""
    assert reply.startswith(b"HTTP/1.1 "), reply[:300]
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


def assert_json_error(reply, status, message):
    got, headers, body = parse(reply)
    assert got == status and headers["content-type"] == "application/json", reply[:300]
    assert int(headers["content-length"]) == len(body) and message in json.loads(body)["error"], reply[:300]


BAD_REQUESTS = {  # what http.server itself answers in HTML, or does not refuse, and the JSON answer due
    "garbage request line": (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
    "bad version": (b"GET / HTTP/1.x\r\n\r\n", 400, "Bad request version"),
    "HTTP/2.0": (b"GET / HTTP/2.0\r\n\r\n", 505, "Invalid HTTP version (2.0)"),
    "70 KB request line": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "request line is longer than 64 KB"),
    # 80 lines of 1.3 KB: each, and their count, within http.server's own limits
    "104 KB of headers": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1300) for i in range(80))
                          + b"\r\n", 431, "more than 64 KB"),
    "101 headers": (b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", 431, "headers"),
    "TRACE": (b"TRACE / HTTP/1.1\r\n" + HOST + b"\r\n", 405, "TRACE is not served here"),
    "lowercase get": (b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 405, "get is not served here"),
    "BREW": (b"BREW /pot HTTP/1.1\r\n" + HOST + b"\r\n", 405, "BREW is not served here"),
    "HEAD": (b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n", 405, ""),  # no body: checked below
    "no Content-Length": (POST + b"\r\n", 411, "Content-Length"),
    "chunked": (POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411, "Content-Length"),
    "Content-Length -1": (POST + b"Content-Length: -1\r\n\r\n", 400, "Content-Length"),
    "Content-Length 1_000": (POST + b"Content-Length: 1_000\r\n\r\n" + b"x" * 1000, 400, "Content-Length"),
    "Content-Length many": (POST + b"Content-Length: many\r\n\r\n", 400, "Content-Length"),
    "Content-Length of 20 MB": (POST + b"Content-Length: 20971520\r\n\r\n", 413, "20,971,520 bytes is more than 4 MB"),
    "Content-Length of 5000 digits": (POST + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 413,
                                      "99999999999999999999... bytes is more than 4 MB"),
    "two Content-Lengths": (POST + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (len(PNG), len(PNG), PNG),
                            400, "one Content-Length"),
    "chunked and Content-Length": (POST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
                                   % (len(PNG), PNG), 400, "Transfer-Encoding"),
    "100-continue for 20 MB": (POST + b"Content-Length: 20971520\r\nExpect: 100-continue\r\n\r\n", 413,
                               "is more than 4 MB"),
    "no Host": (b"GET / HTTP/1.1\r\n\r\n", 403, "answers requests for http://127.0.0.1:"),
    "Host elsewhere": (b"GET / HTTP/1.1\r\nHost: attacker.example:80\r\n\r\n", 403, "(Host: attacker.example:80)"),
    "Host rebound to 127.0.0.1": (b"POST /predict HTTP/1.1\r\nHost: attacker.example:PORT\r\nContent-Length: 3\r\n"
                                  b"\r\nabc", 403, "answers requests for"),
    "Host with another port": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", 403, "(Host: 127.0.0.1:1)"),
    "two Hosts": (b"GET / HTTP/1.1\r\n" + HOST + HOST + b"\r\n", 403, "answers requests for"),
    "POST from another site": (POST + b"Origin: https://attacker.example\r\nContent-Length: %d\r\n\r\n%s"
                               % (len(PNG), PNG), 403, "only the page of http://127.0.0.1:"),
    "POST from a sandboxed page": (POST + b"Origin: null\r\nContent-Length: %d\r\n\r\n%s" % (len(PNG), PNG), 403,
                                   "(Origin: null)"),
}


@pytest.mark.parametrize("raw, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_every_error_is_one_json_answer_and_the_server_goes_on(server, raw, status, message):
    port, _ = server
    raw = raw.replace(b"attacker.example:PORT", b"attacker.example:%d" % port)
    reply = exchange(port, raw)
    assert b"100 Continue" not in reply  # a body that is refused is not asked for
    if raw.startswith(b"HEAD"):
        got, headers, body = parse(reply)
        assert got == 405 and body == b"" and headers["allow"] == "GET, POST"
    else:
        assert_json_error(reply, status, message)
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


def test_expect_100_continue_is_answered_once_the_size_is_fine(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                  % (port, len(PNG)))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(PNG)
        status, answer, _ = answer_on(s)
        assert status == 200 and "digit" in answer


def test_an_unread_body_does_not_pass_for_the_next_request(server):
    port, _ = server
    reply = exchange(port, b"POST /nowhere HTTP/1.1\r\n" + HOST + b"Content-Length: 26\r\n\r\n"
                           b"GET /draw.css HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 ") and reply.count(b"HTTP/1.1 ") == 1  # then the connection is closed


def test_an_unread_get_body_does_not_pass_for_the_next_request(server):
    port, _ = server
    reply = exchange(port, b"GET /draw.css HTTP/1.1\r\n" + HOST + b"Content-Length: 26\r\n\r\n"
                           b"GET /draw.css HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 ") == 1


# Deadlines: the first byte, then the whole request.

def closed_after(s, seconds, drip):
    """Send `drip` once every 0.2 s for up to `seconds`: (seconds until the server closed the connection
    or None, what it sent)."""
    start, reply = time.perf_counter(), b""
    while time.perf_counter() - start < seconds:
        try:
            s.sendall(drip)
            if select.select([s], [], [], 0.2)[0]:
                chunk = s.recv(65536)
                reply += chunk
                if not chunk:
                    return time.perf_counter() - start, reply
        except (BrokenPipeError, ConnectionResetError):
            return time.perf_counter() - start, reply
    return None, reply


# These three measure a deadline of their own server, set to 1 s, against a bound five times as long:
# room for a busy machine, and still far short of the time a client dripping a byte every 0.2 s
# would hold the connection without a deadline (for ever).
def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_deadline_with_408(trained, monkeypatch):
    monkeypatch.setattr(serving, "TIMEOUT", 1)  # seconds for the whole request
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 1000\r\n\r\n" % port)
            seconds, reply = closed_after(s, 5 * serving.TIMEOUT, b"x")  # each read gets a byte in time
    assert seconds is not None, "the server kept the connection"
    assert_json_error(reply, 408, "did not arrive in time")


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(trained, monkeypatch):
    monkeypatch.setattr(serving, "TIMEOUT", 1)
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            seconds, _ = closed_after(s, 5 * serving.TIMEOUT, b"x")
        assert seconds is not None, "the server kept the connection"
        assert request(port, "GET", "/")[0] == 200


def test_a_connection_that_sends_nothing_is_closed_at_the_first_byte_deadline(trained, monkeypatch):
    monkeypatch.setattr(serving, "IDLE", 1)  # seconds for the first byte: short
    monkeypatch.setattr(serving, "TIMEOUT", 60)  # for the whole request, from the first byte: long
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5 * serving.IDLE) as silent, \
                socket.create_connection(("127.0.0.1", port), timeout=5 * serving.IDLE) as kept:
            kept.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
            assert answer_on(kept)[0] == 200  # then nothing more: kept alive, and idle
            assert silent.recv(1) == b"" and kept.recv(1) == b""  # closed, well before TIMEOUT


def test_a_slow_client_does_not_hold_up_the_others(trained, monkeypatch):
    monkeypatch.setattr(serving, "TIMEOUT", 3)  # seconds, not 10: a server of its own, quicker to drop it
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5 * serving.TIMEOUT) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nContent-")  # half a request, then nothing
            assert request(port, "POST", "/predict", stroke_one())[0] == 200
            assert not select.select([slow], [], [], 0)[0]  # answered while the slow one is still held
            assert slow.recv(100) == b""  # then dropped at the deadline, not kept for ever


# Connections: every local client is 127.0.0.1, so sockets held open by one must not lock out another.

def connection_threads():
    """The server threads handling a connection, in all servers of this process."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def states(httpd, state):
    """The server's connections in `state` (serving.IDLE_NOW, READING or BUSY)."""
    with httpd.connections.lock:
        return [s for s, (now, _) in httpd.connections.states.items() if now == state]


def queued(httpd):
    """How many images wait in the server's queue."""
    with httpd.work.changed:
        return sum(map(len, httpd.work.lanes.values()))


@pytest.mark.parametrize("start", [b"", b"GET / HTTP/1.1\r\nX-Slow: "], ids=["idle", "trickling in"])
def test_when_all_places_are_taken_a_new_connection_takes_the_oldest_idle_or_slow_ones(trained, monkeypatch, start):
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(serving, "IDLE", 60)  # the deadlines do not close them during the test
    monkeypatch.setattr(serving, "TIMEOUT", 60)
    state = serving.READING if start else serving.IDLE_NOW
    with serve(trained[0] / "model.pt") as (port, httpd):
        held = []

        def hold():  # one more, once the ones before are idle or reading: their order is known
            held.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            held[-1].sendall(start)
            wait_until(lambda: len(states(httpd, state)) == sum(s.fileno() != -1 for s in held), "held")

        for _ in range(4):
            hold()
        assert request(port, "POST", "/predict", PNG)[0] == 200  # never refused
        assert held[0].recv(1) == b""  # the oldest made room
        held[0].close()
        wait_until(lambda: len(httpd.connections.states) == 3, "the new one gone")
        hold()  # now the newest of four
        assert request(port, "POST", "/predict", PNG)[0] == 200
        assert held[1].recv(1) == b""  # the oldest again, not the newest
        assert not select.select(held[2:], [], [], 0)[0]  # the others are still held
        for s in held:
            s.close()


def test_a_connection_with_a_request_not_yet_read_is_not_taken_for_idle():
    """Its thread has not read it yet (marked idle before it came): taking its place would drop a request."""
    connections, pairs = serving.Connections(), [socket.socketpair() for _ in range(3)]
    for server_end, client_end in pairs:
        client_end.settimeout(10)
        connections.states[server_end] = (serving.IDLE_NOW, time.monotonic() - 1)  # idle for a second,
        connections.blocked.add(server_end)  # its thread waiting for a first byte
    pairs[0][1].sendall(b"GET / HTTP/1.1\r\n")  # the oldest: a request has come
    assert connections.drop_one()
    assert pairs[1][1].recv(1) == b"" and pairs[1][0] not in connections.states  # the next oldest made room
    assert pairs[0][0] in connections.states and pairs[2][0] in connections.states
    for pair in pairs:
        for s in pair:
            s.close()


def test_when_all_connections_are_busy_new_ones_wait_in_line_then_get_503(trained, monkeypatch):
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(serving, "LINE", 4)
    monkeypatch.setattr(serving, "IDLE", 60)  # the busy ones, kept alive, would not be closed by it soon
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch) as held:
        before = len(connection_threads())
        busy = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for s in busy:  # each has its image in the queue or being read: none can make room
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n%s"
                      % (port, len(PNG), PNG))
        held.started(serving.AT_ONCE)
        wait_until(lambda: len(states(httpd, serving.BUSY)) == 4, "all busy")
        line = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for s in line:
            s.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        wait_until(lambda: len(httpd.connections.line) == 4, "in line")
        for _ in range(10):  # past the line: an answer each at once, and no thread
            assert_json_error(exchange(port, b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"), 503, "busy")
        assert len(connection_threads()) - before <= 4
        held.release()
        answers = [answer_on(s) for s in busy]
        assert [status for status, _, _ in answers] == [200] * 4
        # Answered while others waited, it said it would close (the first one at least: the line may be in
        # by the next), so a client sending its next request at once does not keep its place.
        assert any(headers["Connection"] == "close" for _, _, headers in answers)
        for s in line:
            assert answer_on(s)[0] == 200
        for s in busy + line:
            s.close()


def test_a_request_still_arriving_is_not_cut_off_to_make_room(trained, monkeypatch):
    """Its thread had read what had come and was waiting for the rest: such a connection was taken
    for a slow one and closed at once to make room for a new one, and its client got no answer (1 in
    12 honest requests beside 100 clients, in draw_load.py). Only one whose request began ARRIVING
    seconds ago, and still arrives slower than MIN_RATE, makes room."""
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(serving, "ARRIVING", 60)
    with serve(trained[0] / "model.pt") as (port, httpd):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as arriving, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as newcomer:
            whole = post(port)
            arriving.sendall(whole[:-10])
            wait_until(lambda: len(states(httpd, serving.READING)) == 1, "waiting for the rest")
            newcomer.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
            wait_until(lambda: len(httpd.connections.line) == 1, "the new one in line")
            arriving.sendall(whole[-10:])
            assert answer_on(arriving)[0] == 200
            assert answer_on(newcomer)[0] == 200


def test_a_request_read_in_the_moment_its_connection_could_make_room_is_kept():
    """The thread waits for bytes as one that may make room; they come. Before, it read them at once,
    and a new connection arriving before the thread said it no longer waited closed it, with its
    request read and never answered. Now the bytes stay unread, where drop_one sees them, until
    the thread has said so. The new connection is made to come in exactly that moment."""
    connections = serving.Connections()
    server_end, client_end = socket.socketpair()
    connections.states[server_end] = (serving.IDLE_NOW, time.monotonic() - 1)  # idle for a second
    reader = serving.RequestReader(server_end, connections)
    reader.deadline, dropped = time.monotonic() + 30, []
    real_waiting = connections.waiting

    def waiting(sock, now):
        if now:  # the thread waits: the bytes come
            real_waiting(sock, now)
            return client_end.sendall(b"GET / HTTP/1.1\r\n")
        with connections.lock:  # they came; the thread is about to say it no longer waits
            dropped.append(connections.drop_one())
        real_waiting(sock, now)

    connections.waiting = waiting
    with server_end, client_end:
        buffer = bytearray(100)
        assert reader.readinto(buffer) == 16 and bytes(buffer[:16]) == b"GET / HTTP/1.1\r\n"
        assert dropped == [False] and server_end in connections.states


def test_an_upload_arriving_in_pieces_is_not_cut_off_to_make_room(trained, monkeypatch):
    """2 MB in pieces of 64 KB 10 ms apart (6 MB a second), while a new connection waits for a place:
    each wait for the next piece is a wait for bytes, but they come faster than MIN_RATE."""
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(serving, "ARRIVING", 0.01)  # its request began long enough ago
    body = b"\0" * 2**21
    with serve(trained[0] / "model.pt") as (port, httpd):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as upload, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as newcomer:
            upload.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n"
                           % (port, len(body)))
            wait_until(lambda: len(states(httpd, serving.READING)) == 1, "the body awaited")
            newcomer.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
            wait_until(lambda: len(httpd.connections.line) == 1, "the new one in line")
            for start in range(0, len(body), 2**16):
                upload.sendall(body[start:start + 2**16])
                time.sleep(0.01)
            assert answer_on(upload)[0] == 400  # not an image: an answer all the same
            assert answer_on(newcomer)[0] == 200


def test_a_client_that_does_not_take_its_answers_is_dropped_after_idle(trained, monkeypatch):
    """Pipelined requests whose answers are never read: the thread blocks sending them, BUSY, where
    nothing can make it give its place up. It gives up after IDLE seconds (TIMEOUT before)."""
    monkeypatch.setattr(serving, "IDLE", 0.5)
    monkeypatch.setattr(serving, "TIMEOUT", 60)
    with serve(trained[0] / "model.pt") as (port, httpd):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as greedy:
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            request = b"GET /draw.js HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
            greedy.sendall(request * 500)  # 2.8 MB of answers: far more than the sockets hold
            wait_until(lambda: not httpd.connections.states, "the connection given up", seconds=20)


def test_connections_trickling_a_byte_every_few_milliseconds_make_room_too(trained, monkeypatch):
    """A byte every 20 ms, faster than ARRIVING: each wait for the next byte is short, but the request
    began long ago. Before, such connections kept their places until TIMEOUT (a new one waited 9.5 s
    with a byte every 50 ms)."""
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(serving, "TIMEOUT", 60)
    with serve(trained[0] / "model.pt") as (port, httpd):
        stop, tricklers = threading.Event(), [socket.create_connection(("127.0.0.1", port), timeout=30)
                                              for _ in range(2)]

        def trickle(s):
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            while not stop.wait(0.02):
                try:
                    s.sendall(b"x")
                except OSError:  # dropped: the test goes on
                    return

        threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in tricklers]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(states(httpd, serving.READING)) == 2, "both trickling")
            assert request(port, "GET", "/draw.css")[0] == 200  # http.client's timeout: 30 s
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            for s in tricklers:
                s.close()


def test_a_connection_given_a_place_is_left_time_to_send_its_request_while_others_wait(trained, monkeypatch):
    """A new connection that has sent nothing yet is not closed to make room for those in line before
    it has waited ARRIVING seconds: its request may be on its way. (The line is looked at every
    POLL seconds: before, one given its place was dropped at the next look, 0.05 s later.)"""
    monkeypatch.setattr(serving, "MAX_CONNECTIONS", 1)
    monkeypatch.setattr(serving, "LINE", 2)
    monkeypatch.setattr(serving, "IDLE", 60)
    monkeypatch.setattr(serving, "ARRIVING", 60)
    monkeypatch.setattr(serving, "POLL", 0.01)
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch) as held:
        busy = socket.create_connection(("127.0.0.1", port), timeout=30)
        busy.sendall(post(port))
        held.started()
        quiet = socket.create_connection(("127.0.0.1", port), timeout=30)  # in line, its request not sent yet
        wait_until(lambda: len(httpd.connections.line) == 1, "in line")
        last = socket.create_connection(("127.0.0.1", port), timeout=30)
        last.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        wait_until(lambda: len(httpd.connections.line) == 2, "in line")
        held.release()
        assert answer_on(busy)[0] == 200  # then closed: its place goes to the first in line
        wait_until(lambda: len(states(httpd, serving.IDLE_NOW)) == 1, "quiet in its place")
        time.sleep(0.2)  # some 20 looks at the line, with `last` in it: quiet keeps its place
        quiet.sendall(b"GET /draw.css HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        assert answer_on(quiet)[0] == 200
        assert answer_on(last)[0] == 200
        for s in (busy, quiet, last):
            s.close()


# The queue of images: one per connection, in turns by size, shed after WAIT, dropped on stopping.

def post(port, body=PNG):
    return b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body)


def test_a_client_that_sends_more_while_its_image_waits_gives_that_image_up(trained, monkeypatch):
    monkeypatch.setattr(serving, "AT_ONCE", 1)
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch) as held:
        first = socket.create_connection(("127.0.0.1", port), timeout=30)
        first.sendall(post(port))  # being read, held
        held.started()
        newer, pipelined, gone = (socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3))
        drawing, photo_ = stroke_one(), png(Image.new("L", (300, 300), "white"))
        newer.sendall(post(port, drawing))
        wait_until(lambda: queued(httpd) == 1, "queued")
        newer.sendall(post(port, photo_))  # a newer image before the first was read
        pipelined.sendall(post(port, drawing) + post(port, photo_))  # two at once
        gone.sendall(post(port, drawing))
        wait_until(lambda: queued(httpd) == 3, "queued")  # the newer ones, and the one about to leave
        gone.close()
        for s in (newer, pipelined):  # given up at once, while the thread is still held
            status, answer, _ = answer_on(s)
            assert status == 503 and "a newer request came" in answer["error"]
        wait_until(lambda: queued(httpd) == 2, "the one that left given up")
        held.release()
        assert answer_on(first)[0] == 200
        assert answer_on(newer)[1]["error"] == "draw a digit first"  # its newer image: a blank photo
        assert answer_on(pipelined)[1]["error"] == "draw a digit first"
        assert held.bodies == [PNG, photo_, photo_]  # nothing else was read
        for s in (first, newer, pipelined):
            s.close()


def test_drawings_and_photos_take_turns_neither_waits_behind_a_line_of_the_other(trained, monkeypatch):
    monkeypatch.setattr(serving, "AT_ONCE", 1)
    large = png(Image.effect_noise((400, 400), 60))  # 160 KB, a photo: a lane of its own, away from drawings
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch) as held:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(7)]
        for n, (s, body) in enumerate(zip(clients, [large] * 4 + [PNG] * 3)):  # in this order
            s.sendall(post(port, body))
            if n == 0:
                held.started()
            else:
                wait_until(lambda: queued(httpd) == n, "queued")
        held.release()
        for s in clients:
            answer_on(s)
            s.close()
        assert held.bodies == [large, PNG, large, PNG, large, PNG, large]  # not 4 photos first, nor 3 drawings


def test_slow_images_take_one_thread_at_most_the_other_is_kept_for_drawings():
    """Two clients posting images that take most of a second to read held both threads, and a
    drawing waited for one of them: 0.8-1 s (draw_load.py). Images not known to be quick now take
    SLOW_AT_ONCE of the AT_ONCE threads at most."""
    assert serving.SLOW_AT_ONCE < serving.AT_ONCE
    work, gate, started, wakes = serving.WorkQueue(serving.AT_ONCE), threading.Event(), [], []

    def job(name, quick, size):
        def run():
            started.append(name)
            if not quick:
                assert gate.wait(30), "held for 30 s: the test gave up"
            return 200, name
        wakes.append(socket.socketpair())
        return serving.Job(run, size, wakes[-1][0], quick)

    try:
        slow = [job("slow 1", False, 6000), job("slow 2", False, 6000)]
        for one in slow:
            work.submit(one)
        for name in ("drawing 1", "drawing 2"):  # each read while a slow image is being read
            drawing = job(name, True, 900)
            work.submit(drawing)
            assert drawing.done.wait(30) and drawing.answer == (200, name)
        wait_until(lambda: "slow 1" in started, "the first slow one started")
        assert sorted(started) == ["drawing 1", "drawing 2", "slow 1"]  # the second slow one waits its turn
        gate.set()
        assert all(one.done.wait(30) for one in slow)
        assert started[-1] == "slow 2"
    finally:
        gate.set()
        work.stop()
        for pair in wakes:
            for end in pair:
                end.close()


def test_a_drawing_is_answered_while_slow_images_are_read(trained, monkeypatch):
    """Over HTTP, with images that are slow by their header (4 megapixels in a few KB) or their size
    (larger than draw.QUICK_BYTES: not looked at), held in draw.predict: a drawing is answered."""
    blank = png(Image.new("L", (2000, 2000), "white"))  # 50 ms to read, by its header; "draw a digit first"
    large = png(Image.effect_noise((200, 200), 60))  # 36 KB of noise
    assert len(blank) < draw.QUICK_BYTES < len(large)
    assert draw.quick_to_read(PNG) and not draw.quick_to_read(blank) and not draw.quick_to_read(large)
    monkeypatch.setattr(serving, "WAIT", 60)  # the one queued is not shed, however slow the machine
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch, holds=lambda b: b != PNG) as held:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        for s, body in zip(clients, (blank, large)):
            s.sendall(post(port, body))
        held.started()
        wait_until(lambda: queued(httpd) == 1, "the other one queued")
        status, answer = request(port, "POST", "/predict", PNG)  # while the slow one is held
        assert status == 200 and "digit" in answer
        assert len(held.bodies) == 1  # the other slow one still waits: one thread at most
        held.release()
        for s in clients:
            assert answer_on(s)[0] in (200, 400)
            s.close()


def test_a_job_that_fails_is_answered_500_and_its_thread_goes_on(capfd):
    work, wakes = serving.WorkQueue(1), [socket.socketpair() for _ in range(2)]
    try:
        failing = serving.Job(lambda: 1 / 0, 900, wakes[0][0], quick=True)
        work.submit(failing)
        assert failing.done.wait(30) and failing.answer[0] == 500
        after = serving.Job(lambda: (200, "read"), 900, wakes[1][0], quick=True)
        work.submit(after)
        assert after.done.wait(30) and after.answer == (200, "read")  # the one thread still works
    finally:
        work.stop()
        for pair in wakes:
            for end in pair:
                end.close()
    assert "draw.py: an image's work failed: ZeroDivisionError('division by zero')" in capfd.readouterr().err


def test_the_header_is_looked_at_only_for_an_image_to_be_read(trained, monkeypatch):
    """A client sending two images at once: the first is given up before anything looks at it (a
    look at a small file's header takes up to a few ms, in the connection's own thread)."""
    looked = []
    real = draw.quick_to_read
    monkeypatch.setattr(draw, "quick_to_read", lambda body: looked.append(body) or real(body))
    drawing = stroke_one()
    second = png(Image.new("L", (300, 300), "white"))
    with serve(trained[0] / "model.pt") as (port, _), socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(post(port, drawing) + post(port, second))
        assert answer_on(s)[0] == 503
        assert answer_on(s)[1]["error"] == "draw a digit first"
    assert looked == [second]


def test_an_image_slow_to_clean_up_is_not_taken_for_quick():
    """Its header says little: a line winding across 1000x1000 pixels (722 bytes) is decoded in 12 ms
    and cleaned up in 55 more; a drawing from the page, 3 ms in all."""
    image = Image.new("1", (1000, 1000), 0)
    for y in range(2, 990, 24):
        ImageDraw.Draw(image).rectangle([2, y, 997, y + 11], fill=1)
    winding = png(image)
    assert len(winding) < draw.QUICK_BYTES
    assert draw.quick_to_read(PNG) and not draw.quick_to_read(winding)
    assert photo.seconds_to_read(winding) > 3 * draw.QUICK > 3 * photo.seconds_to_read(PNG)


def test_an_image_that_waits_too_long_is_shed_with_503(trained, monkeypatch):
    monkeypatch.setattr(serving, "AT_ONCE", 1)
    monkeypatch.setattr(serving, "WAIT", 0.5)
    with serve(trained[0] / "model.pt") as (port, _), Held(monkeypatch) as held:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as first, \
                socket.create_connection(("127.0.0.1", port), timeout=30) as second:
            first.sendall(post(port))
            held.started()
            second.sendall(post(port))
            status, answer, _ = answer_on(second)  # while the thread is still held
            assert status == 503 and "busy" in answer["error"]
            held.release()
            assert answer_on(first)[0] == 200
        assert len(held.bodies) == 1


def test_stopping_drops_the_waiting_images_at_once(trained, monkeypatch):
    monkeypatch.setattr(serving, "AT_ONCE", 1)
    with serve(trained[0] / "model.pt") as (port, httpd), Held(monkeypatch) as held:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(11)]
        clients[0].sendall(post(port))
        held.started()
        for s in clients[1:]:
            s.sendall(post(port))
        wait_until(lambda: queued(httpd) == 10, "queued")
        httpd.shutdown()
        stopping = threading.Thread(target=httpd.server_close)
        stopping.start()
        for s in clients[1:]:  # answered while the image being read is still held
            status, answer, _ = answer_on(s)
            assert status == 503 and answer["error"] == "the server is stopping"
        held.release()
        stopping.join(timeout=30)
        assert not stopping.is_alive() and len(held.bodies) == 1
        for s in clients:
            s.close()


# The command, and errors.

def lines_of(proc):
    """A queue of the lines `proc` prints, read by a thread: get(timeout=...) never waits for ever."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return lines


SLOW_READER = """
import os, signal, sys, time, torch
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if pytest was started with Ctrl-C ignored
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


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_the_command_prints_the_address_and_stops_at_once_with_images_queued(trained, signum):
    """The images are read for a minute each (photo.read_digit made slow); ten more wait. Ctrl-C or
    SIGTERM stops it within STOP_WAIT (1 s) and the exit: the bound is five times that, far short
    of the minutes the queue would take."""
    out, _ = trained
    proc = subprocess.Popen([sys.executable, "-c", SLOW_READER, ROOT, os.path.join(ROOT, "draw.py"),
                             str(out / "model.pt"), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = lines_of(proc)
        assert lines.get(timeout=120).startswith(f"model {out / 'model.pt'}: 784-64-10 sigmoid")
        line = lines.get(timeout=30)
        assert line.startswith("open http://127.0.0.1:") and line.endswith("/ in a browser (Ctrl-C stops)\n")
        port = int(line.split(":")[2].split("/")[0])
        assert request(port, "GET", "/")[0] == 200
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(serving.AT_ONCE + 10)]
        for s in clients:
            s.sendall(post(port))
        for _ in range(serving.AT_ONCE):
            assert lines.get(timeout=30) == "reading\n"
        proc.send_signal(signum)
        proc.wait(timeout=5 * (serving.STOP_WAIT + 1))
        stderr = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum and stderr.strip() == f"interrupted ({name}): the server stopped", stderr
    for s in clients:
        s.close()


def test_listening_beyond_loopback_warns_and_a_taken_port_is_one_line(trained, server, monkeypatch, capsys):
    out, _ = trained
    port, _ = server
    assert main_error(draw, out / "model.pt", "--port", port).startswith(f"error: cannot listen on 127.0.0.1:{port}")
    made, serving_now = [], threading.Event()  # draw.main's server, to stop it from here as Ctrl-C would

    def make(*args, make_server=draw.make_server):
        httpd = make_server(*args)
        serve_forever = httpd.serve_forever
        httpd.serve_forever = lambda: serving_now.set() or serve_forever()
        made.append(httpd)
        return httpd

    monkeypatch.setattr(draw, "make_server", make)
    capsys.readouterr()
    switch_interval = sys.getswitchinterval()
    main = threading.Thread(target=draw.main, args=([str(out / "model.pt"), "--host", "0.0.0.0", "--port", "0"],))
    main.start()
    assert serving_now.wait(timeout=60)
    made[0].shutdown()
    main.join(timeout=30)
    printed, warned = capsys.readouterr()
    assert "open http://127.0.0.1:" in printed and not main.is_alive()
    assert sys.getswitchinterval() == switch_interval  # set while it serves, and put back
    assert warned.splitlines()[0] == "warning: listening on 0.0.0.0: anyone who can reach this machine can use the page"


def test_clients_that_reset_before_the_answer_leave_no_traceback(trained, monkeypatch, capfd):
    linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, not a goodbye
    monkeypatch.setattr(serving, "AT_ONCE", 4)  # each whole request is read at once, and held
    with serve(trained[0] / "model.pt") as (port, _), Held(monkeypatch) as held:
        capfd.readouterr()
        for whole in (True, False) * 4:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.sendall(post(port) if whole else post(port)[:200])
            if whole:
                held.started()  # read, and about to be answered
            s.close()
        held.release()
        assert request(port, "POST", "/predict", PNG)[0] == 200
    err = capfd.readouterr().err  # the server is closed: its threads have said all they will
    assert "Traceback" not in err and err == "", err


def test_an_unexpected_error_in_a_handler_is_one_line_not_a_traceback(server, monkeypatch, tmp_path, capfd):
    port, _ = server
    monkeypatch.setattr(draw, "PAGE", str(tmp_path / "gone"))  # the page's files went missing
    capfd.readouterr()
    with pytest.raises(http.client.RemoteDisconnected):  # the line is written before the connection is closed
        request(port, "GET", "/")
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
