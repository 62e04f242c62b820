"""draw.py over real HTTP on a free loopback port: answers from drawings and real digits, every
kind of bad request answered with the right status while the server keeps serving, and load."""
import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import re
import select
import signal
import socket
import struct
import threading
import time

import pytest
import torch
from PIL import Image, ImageDraw

import checkpoint
import data
import draw
import evaluate
import photo
from conftest import ROOT, Child, huge_png, main_error


@pytest.fixture(scope="module")
def server(trained):
    """A draw.py server in this process, on a free port, with the small two-epoch model."""
    out, _ = trained
    with serve(out / "model.pt") as port_and_model:
        yield port_and_model


@contextlib.contextmanager
def serve(path):
    """(port, model) of a draw.py server running in this process until the block ends. It reads
    draw's constants when it is made: a test that changes one (with monkeypatch) starts its own."""
    model = checkpoint.model_from(checkpoint.load(str(path)), str(path)).eval()
    httpd = draw.make_server(model, torch.device("cpu"), "127.0.0.1", 0)
    httpd.daemon_threads = False  # so that server_close waits for the threads of its connections
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], model
    finally:
        httpd.shutdown()
        httpd.server_close()  # then all they print is printed


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
POST = b"POST /predict HTTP/1.1\r\nHost: x\r\n"  # the start of a request, for those sent byte by byte


def test_the_page_and_its_files_are_served(server):
    port, _ = server
    status, page = request(port, "GET", "/")
    assert status == 200 and b'<canvas id="pad"' in page and b'src="/draw.js"' in page
    for name in ("/draw.js", "/draw.css"):
        status, body = request(port, "GET", name)
        with open(os.path.join(ROOT, "page", name[1:]), "rb") as f:
            assert status == 200 and body == f.read()


def test_a_prediction_is_the_same_as_evaluate_image_gives(server, trained, tmp_path, capsys):
    """The server's digit and top probability are those `python evaluate.py CKPT --image PATH` prints."""
    port, _ = server
    out, _ = trained
    status, answer = request(port, "POST", "/predict", stroke_one(), {"Content-Type": "image/png"})
    assert status == 200 and set(answer) == {"digit", "probabilities", "image", "note"}
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


def test_a_20_mb_body_is_refused_by_its_length_before_it_is_sent(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20971520\r\n\r\n")  # and no body
        reply = b""
        while chunk := s.recv(65536):  # the server answers and closes without waiting for the body
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413 ") and "is more than 4 MB" in reply
    assert request(port, "POST", "/predict", stroke_one())[0] == 200


def test_a_decompression_bomb_is_refused(server, tmp_path):
    port, _ = server
    huge_png(tmp_path / "bomb.png", side=8000)  # 64 megapixels in 200 KB
    status, answer = request(port, "POST", "/predict", (tmp_path / "bomb.png").read_bytes())
    assert status == 413 and "is more than this reads (50 megapixels)" in answer["error"]


def test_a_slow_client_does_not_hold_up_the_others(trained, monkeypatch):
    monkeypatch.setattr(draw, "TIMEOUT", 3)  # seconds, not 10: a server of its own, quicker to drop it
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nContent-")  # half a request, then nothing
            start = time.perf_counter()
            assert request(port, "POST", "/predict", stroke_one())[0] == 200
            assert time.perf_counter() - start < 2  # well before the slow one is dropped
            slow.settimeout(draw.TIMEOUT + 10)
            assert slow.recv(100) == b""  # dropped after draw.TIMEOUT seconds, not kept forever
            assert time.perf_counter() - start < draw.TIMEOUT + 2


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


def test_an_unread_body_does_not_pass_for_the_next_request(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /nowhere HTTP/1.1\r\nContent-Length: 26\r\n\r\nGET /draw.css HTTP/1.1\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):  # one answer, then the connection is closed
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 404 ") and reply.count(b"HTTP/1.1 ") == 1


def test_an_unread_get_body_does_not_pass_for_the_next_request(server):
    port, _ = server
    reply = exchange(port, b"GET /draw.css HTTP/1.1\r\nContent-Length: 26\r\n\r\nGET /draw.css HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 ") == 1


def test_50_concurrent_requests_are_all_answered(server):
    port, _ = server
    body = stroke_one()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: request(port, "POST", "/predict", body), range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert len({json.dumps(answer["probabilities"]) for _, answer in results}) == 1


@pytest.mark.slow  # a process of its own
def test_the_command_prints_the_address_and_stops_on_ctrl_c(trained):
    out, _ = trained
    proc = Child("draw.py", out / "model.pt", "--port", "0")
    assert proc.line("").startswith(f"model {out / 'model.pt'}: 784-64-10 sigmoid")
    line = proc.line("")
    assert line.startswith("open http://127.0.0.1:") and line.endswith("/ in a browser (Ctrl-C stops)\n")
    port = int(line.split(":")[2].split("/")[0])
    assert request(port, "GET", "/")[0] == 200
    proc.send(signal.SIGINT)
    returncode, stderr = proc.finish(timeout=30)
    assert returncode == 130 and stderr.strip() == "interrupted (SIGINT): the server stopped"


def test_listening_beyond_loopback_warns_and_a_taken_port_is_one_line(trained, server, monkeypatch, capsys):
    out, _ = trained
    port, _ = server
    assert main_error(draw, out / "model.pt", "--port", port).startswith(f"error: cannot listen on 127.0.0.1:{port}")
    made = []  # draw.main's server, to stop it from here as Ctrl-C would
    monkeypatch.setattr(draw, "make_server", lambda *args, make=draw.make_server: made.append(make(*args)) or made[0])
    capsys.readouterr()
    main = threading.Thread(target=draw.main, args=([str(out / "model.pt"), "--host", "0.0.0.0", "--port", "0"],))
    main.start()
    printed, warned = "", ""
    for _ in range(300):
        out_now, err_now = capsys.readouterr()
        printed, warned = printed + out_now, warned + err_now
        if "open http://" in printed:
            break
        time.sleep(0.1)
    made[0].shutdown()
    main.join(timeout=30)
    assert "open http://127.0.0.1:" in printed and not main.is_alive()
    assert warned.splitlines()[0] == "warning: listening on 0.0.0.0: anyone who can reach this machine can use the page"


# Raw HTTP: what http.client would not send, read as it comes.

def exchange(port, raw, timeout=10):
    """The server's whole reply to `raw`, sent on a new connection: read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
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
    "TRACE": (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "TRACE is not served here"),
    "lowercase get": (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 405, "get is not served here"),
    "BREW": (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 405, "BREW is not served here"),
    "no Content-Length": (POST + b"\r\n", 411, "Content-Length"),
    "chunked": (POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411, "Content-Length"),
    "Content-Length -1": (POST + b"Content-Length: -1\r\n\r\n", 400, "Content-Length"),
    "Content-Length 1_000": (POST + b"Content-Length: 1_000\r\n\r\n" + b"x" * 1000, 400, "Content-Length"),
    "Content-Length many": (POST + b"Content-Length: many\r\n\r\n", 400, "Content-Length"),
    "two Content-Lengths": (POST + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s" % (len(PNG), len(PNG), PNG),
                            400, "one Content-Length"),
    "chunked and Content-Length": (POST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%s"
                                   % (len(PNG), PNG), 400, "Transfer-Encoding"),
    "100-continue for 20 MB": (POST + b"Content-Length: 20971520\r\nExpect: 100-continue\r\n\r\n", 413,
                               "is more than 4 MB"),
}


@pytest.mark.parametrize("raw, status, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_every_error_is_one_json_answer_and_the_server_goes_on(server, raw, status, message):
    port, _ = server
    reply = exchange(port, raw)
    assert b"100 Continue" not in reply  # a body that is refused is not asked for
    assert_json_error(reply, status, message)
    assert request(port, "POST", "/predict", PNG)[0] == 200


def test_head_gets_405_without_a_body(server):
    port, _ = server
    status, headers, body = parse(exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 405 and body == b"" and headers["allow"] == "GET, POST"


def test_expect_100_continue_is_answered_once_the_size_is_fine(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(POST + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(PNG))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(PNG)
        response = http.client.HTTPResponse(s)
        response.begin()
        assert response.status == 200 and "digit" in json.loads(response.read())


# Limits: a deadline for the whole request, and a cap on connections.

def stalled(port, count, start=b"POST /predict HTTP/1.1\r\nContent-"):
    """`count` connections that sent the start of a request and nothing more."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for s in sockets:
        s.sendall(start)
    return sockets


def connection_threads():
    """The server threads handling a connection, in all servers of this process."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


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


def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_deadline_with_408(trained, monkeypatch):
    monkeypatch.setattr(draw, "TIMEOUT", 1)  # seconds for the whole request
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(POST + b"Content-Length: 1000\r\n\r\n")
            seconds, reply = closed_after(s, 5, b"x")  # a byte every 0.2 s: each read gets one in time
    assert seconds is not None and seconds < 2.5, seconds
    assert_json_error(reply, 408, "did not arrive in time")


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(trained, monkeypatch):
    monkeypatch.setattr(draw, "TIMEOUT", 1)
    with serve(trained[0] / "model.pt") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            seconds, _ = closed_after(s, 5, b"x")
        assert seconds is not None and seconds < 2.5, seconds
        assert request(port, "GET", "/")[0] == 200


def test_connections_beyond_the_cap_get_503_at_once_and_threads_stay_bounded(trained, monkeypatch):
    monkeypatch.setattr(draw, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(draw, "TIMEOUT", 5)  # the stalled ones stay while the others knock
    with serve(trained[0] / "model.pt") as (port, _):
        before = len(connection_threads())
        held = stalled(port, 4)
        time.sleep(0.3)  # accepted, each by a thread of its own
        start = time.perf_counter()
        refused = stalled(port, 20)  # 20 more: no thread each, an answer each at once
        for s in refused:
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            assert_json_error(reply, 503, "busy")
            s.close()
        assert time.perf_counter() - start < 2
        assert len(connection_threads()) - before <= 4
        for s in held:
            s.close()  # their slots come free
        for _ in range(50):
            status, _ = request(port, "GET", "/")
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200


def test_clients_that_reset_before_the_answer_leave_no_traceback(trained, capfd):
    linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset, not a goodbye
    with serve(trained[0] / "model.pt") as (port, _):
        capfd.readouterr()
        for whole in (True, False) * 4:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.sendall(POST + b"Content-Length: %d\r\n\r\n" % len(PNG) + (PNG if whole else PNG[:100]))
            if whole:
                time.sleep(0.002)  # read, and being answered
            s.close()
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
