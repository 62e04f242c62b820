"""HTTP serving that keeps answering its user whatever other clients do: connections, limits, the work queue.

draw.py says what is served (the page's files, POST /predict) in a subclass of Handler; this module
decides who is read, for how long, and in what order the images are worked on. Every local client
is 127.0.0.1, so no bound rests on the address: the unit is the connection. Standard library only.

- A connection must send the first byte of a request within IDLE seconds (a new one, or a kept-alive
  one between requests), the rest within TIMEOUT seconds however slowly it trickles in, its request
  line and headers within MAX_HEAD bytes.
- At most MAX_CONNECTIONS are served at once, a thread each. When all are taken, a new one takes
  the place of the one idle longest, or else of the one whose request began longest ago and is
  still arriving slower than MIN_RATE, ARRIVING seconds at least either way, its thread waiting
  for bytes with none unread (sockets held open or trickling cannot lock anyone out; a request
  arriving at the speed of the machine, or an upload, is not cut off); when none can make room, it
  waits in line, with no thread, looked at again every POLL seconds, and the busy ones close after
  their answer until the line is empty (more clients than places take turns). Past a line of
  LINE, 503. An answer not taken within IDLE seconds is given up.
- Only requests for this server's own address are answered (Host: 127.0.0.1, localhost or --host,
  with the port), and only POSTs from its own page (Origin): a web page elsewhere cannot use it, even
  by pointing a name of its own at 127.0.0.1 (DNS rebinding). Anything else gets a JSON 403.
- Images are worked on by AT_ONCE threads, of which SLOW_AT_ONCE at most on images not known to be
  quick (draw.py says which are): the others are kept for drawings, which no photo, however slow
  to read, then holds up. A connection has one image in the queue at most: if it sends anything
  more while its image waits (a newer image, or it went away), the waiting one is given up. Images
  take turns by size (see WorkQueue); one that waited WAIT seconds is shed with 503, so the oldest
  go first. Stopping drops what waits at once.
"""
import collections
import http.server
import io
import json
import select
import socket
import sys
import threading
import time

TIMEOUT = 10  # seconds a client may take to send a whole request, from its first byte
IDLE = 2  # seconds a connection may wait before that first byte: a page sends at once
MAX_HEAD = 64 * 2**10  # bytes of request line and headers together (http.server alone takes ~6 MB)
MAX_CONNECTIONS = 128  # served at once, a thread each (each may hold a body: 512 MB of draw.py's)
LINE = 64  # connections waiting for a place when all are busy, with no thread; past them, 503
ARRIVING = 0.1  # seconds a request (or a wait for one) must have lasted before its connection may make room,
MIN_RATE = 2**20  # and bytes a second it must be arriving slower than: a trickle, not an upload
POLL = 0.05  # seconds between looks at the line, when no new connection comes
AT_ONCE = 2  # threads that work on images (one a core): memory stays bounded under any load
SLOW_AT_ONCE = 1  # of them at most on images not known to be quick: the other is kept for drawings
WAIT = 5  # seconds an image may wait for a thread before it is shed with 503
STOP_WAIT = 1  # seconds stopping waits for the images being worked on (photo.py bounds each)
IDLE_NOW, READING, BUSY = 0, 1, 2  # a connection's state; a new one is BUSY until its thread looks at it


class HeadTooLarge(Exception):
    """The request line and headers are more than MAX_HEAD bytes."""


class RequestReader(io.RawIOBase):
    """A connection's socket, read against one deadline per request: IDLE seconds for its first
    byte, then TIMEOUT for the rest. The time left is the timeout of each read, so a client sending
    a byte every few seconds runs out of time all the same. `connections` is told when it waits for
    bytes and when a request has begun."""

    def __init__(self, sock, connections):
        self.sock, self.connections = sock, connections
        self.deadline, self.first, self.peeking = 0.0, True, False
        self.began, self.received = 0.0, 0  # the request's first byte, and its bytes so far

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.peeking:  # whatever has come, without waiting for more
            self.sock.settimeout(0)
            try:
                n = self.sock.recv_into(buffer)
            except BlockingIOError:
                return None
        else:
            left = self.deadline - time.monotonic()
            if left <= 0 or not (readable([self.sock]) or self.wait(left)):
                raise TimeoutError("the request did not arrive in time")
            self.sock.settimeout(max(left, 0.01))
            n = self.sock.recv_into(buffer)
        if n and self.first:
            self.first, self.deadline, self.began = False, time.monotonic() + TIMEOUT, time.monotonic()
            self.connections.mark(self.sock, READING)
        self.received += n or 0
        return n

    def wait(self, seconds):
        """Wait up to `seconds` for bytes from the client (or its end), True if they came. Meanwhile
        the connection may be closed to make room for others if what it sends is slow: nothing yet,
        or fewer than MIN_RATE bytes a second since its request began. The bytes are read only once
        it is out of Connections.blocked: a request taken in is never cut off unanswered."""
        slow = self.first or self.received < MIN_RATE * (time.monotonic() - self.began)
        if slow:
            self.connections.waiting(self.sock, True)
        try:
            return bool(readable([self.sock], seconds))
        finally:
            if slow:
                self.connections.waiting(self.sock, False)


class RequestFile(io.BufferedReader):
    """A handler's rfile: RequestReader, buffered. readline, which http.server uses for the request
    line and headers only (a body is read with read), stops at MAX_HEAD bytes a request."""
    head_left = 0

    def start(self):
        """A new request: IDLE seconds for its first byte, and its head may take MAX_HEAD bytes."""
        self.raw.deadline, self.raw.first, self.raw.received = time.monotonic() + IDLE, True, 0
        self.head_left = MAX_HEAD

    def readline(self, size=-1):
        if self.head_left <= 0:
            raise HeadTooLarge
        line = super().readline(self.head_left if size < 0 else min(size, self.head_left))
        self.head_left -= len(line)
        return line

    def has_more(self):
        """Whether the client has sent bytes past what was read (a next request), without waiting."""
        self.raw.peeking = True
        try:
            return bool(self.peek(1))
        finally:
            self.raw.peeking = False


def readable(socks, timeout=0):
    """Those of `socks` with bytes to read (or closed by their client), waiting up to `timeout` s."""
    poll = select.poll()  # not select.select: no limit on the descriptors' numbers
    for s in socks:
        poll.register(s, select.POLLIN)
    ready = {fd for fd, _ in poll.poll(timeout * 1000)}
    return [s for s in socks if s.fileno() in ready]


class Connections:
    """The sockets being served, each IDLE_NOW (waiting for a request's first byte), READING (a
    request, or its body, is arriving) or BUSY, with the time it became so; those whose thread
    waits for bytes now; and the line of those waiting for a place."""

    def __init__(self):
        self.lock = threading.Lock()
        self.states = {}  # socket -> (state, since)
        self.blocked = set()  # sockets whose thread waits for bytes from them now, slow to come
        self.line = collections.deque()  # (socket, address) waiting for a place

    def admit(self, sock, address):
        """'serve' `sock` now (in place of an idle or slow one if all places are taken), 'wait' in
        line, or 'refuse' it."""
        with self.lock:
            if len(self.states) >= MAX_CONNECTIONS and not self.drop_one():
                if len(self.line) >= LINE:
                    return "refuse"
                self.line.append((sock, address))
                return "wait"
            self.states[sock] = (BUSY, time.monotonic())
            return "serve"

    def drop_one(self):
        """Close the connection idle longest, or else the one whose request began longest ago, among
        those whose thread waits now for bytes slow to come (none yet, or under MIN_RATE a second),
        for a request that began (or a wait for one) ARRIVING seconds ago at least: a request
        arriving at the speed of the machine, an upload, or a connection just given its place is
        not cut off; one trickling in is, however often its bytes come. Never one with bytes
        waiting to be read (a request that came before its thread read it). False if none."""
        since = time.monotonic() - ARRIVING
        slow = sorted((s for s, (state, start) in self.states.items()
                       if state != BUSY and start <= since and s in self.blocked), key=self.states.get)
        sent = set(readable(slow)) if slow else set()
        victim = next((s for s in slow if s not in sent), None)
        if victim is None:
            return False
        del self.states[victim]
        try:
            victim.shutdown(socket.SHUT_RDWR)  # its thread's read ends at once, and the thread with it
        except OSError:
            pass
        return True

    def mark(self, sock, state):
        with self.lock:
            if sock in self.states:  # not if it was dropped meanwhile
                self.states[sock] = (state, time.monotonic())

    def waiting(self, sock, now):
        """Whether the thread of `sock` waits `now` for bytes from it that are slow to come."""
        with self.lock:
            (self.blocked.add if now else self.blocked.discard)(sock)

    def make_room(self):
        """The (socket, address) of those in line that take a place made now (closing idle or slow
        ones): while all places are busy, those in line wait for one to end, or to become idle
        or slow; the server looks again after each connection taken in, and every POLL seconds."""
        with self.lock:
            admitted = []
            while self.line and self.drop_one():
                admitted.append(self.line.popleft())
                self.states[admitted[-1][0]] = (BUSY, time.monotonic())
            return admitted

    def crowded(self):
        """Whether connections wait in line: a busy one then closes after its answer, to make room."""
        return bool(self.line)

    def leave(self, sock):
        """`sock` is done: the (socket, address) first in line to take its place, or None."""
        with self.lock:
            if self.states.pop(sock, None) is None or not self.line:
                return None
            nxt = self.line.popleft()
            self.states[nxt[0]] = (BUSY, time.monotonic())
            return nxt

    def close_all(self):
        """Stopping: the read of every connection not busy ends now, not at its deadline (a busy one
        sends its answer, then closes); the line is closed."""
        with self.lock:
            for sock, (state, _) in self.states.items():
                try:
                    if state != BUSY:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            for sock, _ in self.line:
                sock.close()
            self.states.clear()
            self.line.clear()


class Job:
    """One image's work: `run` gives (status, JSON-able); `wake` is told when the answer is in."""

    def __init__(self, run, size, wake, quick=False):
        self.run, self.wake, self.answer, self.quick = run, wake, None, quick
        self.lane = (not quick, size.bit_length() // 2)  # quick ones apart; sizes within a factor of 4 share a lane
        self.done = threading.Event()

    def finish(self, answer):
        self.answer = answer
        self.done.set()
        try:
            self.wake.send(b"!")
        except OSError:  # the connection is gone
            pass


class WorkQueue:
    """The images waiting for one of AT_ONCE threads, in lanes by size: the lanes take turns, and in
    each the oldest goes first. What an image costs grows with its size (photo.py bounds its pixels
    by its bytes), so a drawing of a few KB never waits behind a line of 4 MB photos, nor a photo
    behind a line of drawings. But a few KB may also hold a slow image (an RLE BMP takes 0.8 s):
    images not known to be quick have lanes of their own, and SLOW_AT_ONCE threads at most, so
    that a drawing never waits for a slow image's read to end.

    The queue holds one image per connection at most, so MAX_CONNECTIONS in all: a lower bound would
    shed images as new ones come, and a client shed at once resends at once, so a few such clients
    would push everyone else out. Shedding is by waiting time instead (WAIT, in the handler)."""

    def __init__(self, workers):
        self.lanes = collections.defaultdict(collections.deque)
        self.last_lane = (False, -1)
        self.slow = 0  # threads working on an image not known to be quick
        self.changed = threading.Condition()
        self.stopped = False
        self.threads = [threading.Thread(target=self.work, name=f"reader-{i}", daemon=True) for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, job):
        with self.changed:
            if self.stopped:
                return job.finish((503, {"error": "the server is stopping"}))
            self.lanes[job.lane].append(job)
            self.changed.notify()

    def withdraw(self, job, answer):
        """Give `job` up with `answer` if it is still waiting; False once a thread has it."""
        with self.changed:
            if job not in self.lanes.get(job.lane, ()):
                return False
            self.lanes[job.lane].remove(job)
        job.finish(answer)
        return True

    def ready(self):
        """The lanes with a job a thread may take now: slow ones only while fewer than SLOW_AT_ONCE
        threads work on slow images."""
        slow_allowed = self.slow < SLOW_AT_ONCE
        return sorted(lane for lane, jobs in self.lanes.items() if jobs and (slow_allowed or not lane[0]))

    def next_job(self, lanes):
        """The oldest job of the lane after the last one served (in turn, round and round)."""
        self.last_lane = next((lane for lane in lanes if lane > self.last_lane), lanes[0])
        return self.lanes[self.last_lane].popleft()

    def work(self):
        while True:
            with self.changed:
                while not self.stopped and not (lanes := self.ready()):
                    self.changed.wait()
                if self.stopped:
                    return
                job = self.next_job(lanes)
                self.slow += not job.quick
            try:
                job.finish(self.answer(job))
            finally:
                if not job.quick:
                    with self.changed:
                        self.slow -= 1
                        self.changed.notify()  # a slow image may wait for a thread that is free

    @staticmethod
    def answer(job):
        """job.run(), or a 500 and one line if it fails: its connection waits for an answer."""
        try:
            return job.run()
        except Exception as e:
            print(f"draw.py: an image's work failed: {e!r}"[:300], file=sys.stderr)
            return 500, {"error": "could not read this image"}

    def stop(self):
        """Drop the waiting jobs (answered 503) and let the threads end, waiting for the jobs in
        progress STOP_WAIT seconds at most."""
        with self.changed:
            self.stopped, dropped = True, [job for jobs in self.lanes.values() for job in jobs]
            self.lanes.clear()
            self.changed.notify_all()
        for job in dropped:
            job.finish((503, {"error": "the server is stopping"}))
        end = time.monotonic() + STOP_WAIT
        for thread in self.threads:
            thread.join(max(0, end - time.monotonic()))


class Handler(http.server.BaseHTTPRequestHandler):
    """http.server's handler with the deadlines, MAX_HEAD, the Host and Origin checks, JSON errors,
    405 for any method not served, and the work queue (answer_in_turn). Subclasses add do_GET, do_POST."""
    server_version = "mnist-draw"
    protocol_version = "HTTP/1.1"  # keep-alive: the page sends many requests
    # An answer to a request line too broken to name its version still starts with a status
    # line (http.server would send the bare body, as HTTP/0.9 did).
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for the client's delayed ACK

    def setup(self):
        super().setup()
        self.rfile.close()  # http.server's, replaced by one that keeps the deadlines and MAX_HEAD
        connections, connection = self.server.connections, self.connection
        self.rfile = RequestFile(RequestReader(connection, connections))
        self.wake = self.woken = None  # a job's answer wakes the wait in answer_in_turn through them
        self.answered = 0  # requests answered on this connection

    def finish(self):
        try:
            super().finish()
        finally:
            if self.wake:
                self.wake.close()
                self.woken.close()

    def handle_one_request(self):
        """http.server's, with the deadlines, MAX_HEAD, the Host and Origin checks, and 405."""
        if self.server.work.stopped:  # no next request: the server is stopping
            self.close_connection = True
            return
        self.rfile.start()
        if not self.rfile.has_more():  # nothing yet: it may make room for a new connection
            if self.answered and self.server.connections.crowded():  # kept alive: room for those in line
                self.close_connection = True
                return
            self.server.connections.mark(self.connection, IDLE_NOW)
        self.command, self.requestline, self.request_version = None, "", self.default_request_version
        self.wants_continue = False
        try:
            self.raw_requestline = self.rfile.readline()
            if not self.raw_requestline:  # the client closed the connection, or it was dropped
                self.close_connection = True
                return
            if self.rfile.head_left <= 0:
                return self.send_error(414, f"the request line is longer than {MAX_HEAD // 2**10} KB")
            if not self.parse_request():  # which has answered
                return
        except HeadTooLarge:
            return self.send_error(431, f"the request line and headers are more than {MAX_HEAD // 2**10} KB")
        except TimeoutError:  # half a request, or none yet: dropped
            self.close_connection = True
            return
        self.server.connections.mark(self.connection, BUSY)
        refusal = self.refusal()
        if refusal:
            return self.send_error(403, refusal)
        getattr(self, "do_" + self.command, self.refuse_method)()
        self.wfile.flush()

    def refusal(self):
        """Why this request is not for this server, or None: a Host that is not its address, or a POST
        from a page elsewhere. Origin is a browser's; other clients may leave it out."""
        hosts = self.headers.get_all("Host", [])
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.server.hosts:
            return f"this server answers requests for {self.server.url} only (Host: {', '.join(hosts)[:60]})"
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and origin.strip().lower() not in self.server.origins:
            return f"only the page of {self.server.url} may send images here (Origin: {origin[:60]})"
        return None

    def send(self, status, body, content_type="application/json", headers=()):
        """One answer; to HEAD, its status and headers only (HTTP allows no body there)."""
        if content_type == "application/json":
            body = json.dumps(body).encode()
        if self.server.connections.crowded() or self.server.work.stopped:
            self.close_connection = True  # its place goes to the first in line; or the server is stopping
        self.connection.settimeout(IDLE)  # a client that does not take its answer is dropped too
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 503:
            self.send_header("Retry-After", "1")
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")  # the client knows not to send another request
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.answered += 1

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a broken request line, HTTP/2.0, 101 headers) in JSON too."""
        self.close_connection = True  # what follows a refused request may not be a request
        self.send(code, {"error": (message or self.responses.get(code, ("refused",))[0])[:200]})

    def handle_expect_100(self):  # parse_request's: "100 Continue" waits until read_body has checked the size
        self.wants_continue = True
        return True

    def read_body(self, max_bytes):
        """The request's body, or None once it has answered (no length, too long, too slow, gone).
        The connection is kept alive only once the body is read: unread bytes would pass for the
        next request."""
        asked_to_close, self.close_connection = self.close_connection, True
        lengths = self.headers.get_all("Content-Length", [])
        if lengths and "Transfer-Encoding" in self.headers:  # each side could end the body elsewhere
            return self.send(400, {"error": "send a Content-Length or a Transfer-Encoding, not both"})
        if not lengths:
            return self.send(411, {"error": "send the image with a Content-Length"})
        if len(lengths) > 1:
            return self.send(400, {"error": "send one Content-Length"})
        if not (lengths[0].isascii() and lengths[0].isdigit()):  # int() takes -1, +1, 1_000 too
            return self.send(400, {"error": f"the Content-Length {lengths[0][:20]!r} is not a number of bytes"})
        digits = lengths[0].lstrip("0") or "0"  # int() refuses over 4300 digits: a length that long is too long
        if len(digits) > len(str(max_bytes)) or int(digits) > max_bytes:  # refused before reading a byte of it
            size = f"{int(digits):,}" if len(digits) <= 20 else digits[:20] + "..."
            return self.send(413, {"error": f"{size} bytes is more than {max_bytes // 2**20} MB"})
        if self.wants_continue:  # the client waits for this before it sends the body
            self.send_response_only(100)
            self.end_headers()
        self.server.connections.mark(self.connection, READING)  # a body trickling in may make room for others
        try:
            body = self.rfile.read(int(digits))
        except TimeoutError:
            return self.send(408, {"error": "the image did not arrive in time"})
        if len(body) < int(digits):
            return None  # the client went away
        self.server.connections.mark(self.connection, BUSY)
        self.close_connection = asked_to_close
        return body

    def answer_in_turn(self, run, size, quick=lambda: False):
        """Send the answer of run() (status, JSON-able) for a body of `size` bytes, worked on in its
        turn; quick() says whether it is known to take a few milliseconds (a drawing), asked only
        if it is to be worked on. Given up (503) if the client sends anything more first, or it
        waits WAIT seconds."""
        superseded = (503, {"error": "a newer request came on this connection: this image was not read"})
        if self.rfile.has_more():  # two requests at once: the newer one wins
            return self.send(*superseded)
        if not self.wake:
            self.wake, self.woken = socket.socketpair()
        job = Job(run, size, self.wake, quick())
        self.server.work.submit(job)
        end = time.monotonic() + WAIT
        while not job.done.is_set():
            ready = readable([self.connection, self.woken], max(0, end - time.monotonic()))
            if self.woken in ready:
                self.woken.recv(64)
            elif ready or time.monotonic() >= end:  # the client sent more, or left; or it waited too long
                shed = superseded if ready else (503, {"error": "the server is busy: try again in a moment"})
                if not self.server.work.withdraw(job, shed):
                    job.done.wait()  # a thread has it: done within the image's own bound
        self.send(*job.answer)

    def refuse_method(self):  # any method but GET and POST: HEAD, PUT, TRACE, get, BREW...
        self.close_connection = True  # its body, if any, is not read
        self.send(405, {"error": f"{self.command[:20]} is not served here: GET the page, POST /predict"},
                  headers=[("Allow", "GET, POST")])

    def log_message(self, format, *args):  # no line per request: the terminal stays readable
        pass


BUSY_ANSWER = json.dumps({"error": "the server is busy: try again in a moment"}).encode()
BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(BUSY_ANSWER), BUSY_ANSWER))


class Server(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer with Connections, a WorkQueue and the names it answers to (not started)."""
    request_queue_size = 128  # the default 5 resets clients when many connect at once

    def __init__(self, address, handler):
        self.connections = Connections()
        self.work = WorkQueue(AT_ONCE)  # stopped by server_close, which __init__ calls if the address is taken
        super().__init__(address, handler)
        host, port = self.server_address[:2]
        names = {"127.0.0.1", "localhost", address[0].lower()}
        names = {f"[{name}]" if ":" in name else name for name in names}  # an IPv6 address, as a URL has it
        self.hosts = {f"{name}:{port}" for name in names} | (names if port == 80 else set())
        self.origins = {f"http://{host}" for host in self.hosts}
        self.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"
        self.starting = threading.Lock()  # threads are started from the accepting thread and from others
        self.stopped_by = None

    def process_request(self, request, client_address):
        try:
            admitted = self.connections.admit(request, client_address)
            if admitted == "serve":
                self.start_thread(request, client_address)
            elif admitted == "refuse":  # answered at once, with no thread of its own
                request.setblocking(False)  # this is the thread that accepts: it never waits on a client
                try:
                    request.sendall(BUSY_ANSWER)
                except OSError:
                    pass
                self.shutdown_request(request)
        except KeyboardInterrupt as stop:  # raised here, socketserver would close the socket under
            self.stopped_by = stop  # its new thread: it is raised just after, from service_actions

    def serve_forever(self, poll_interval=None):
        super().serve_forever(POLL if poll_interval is None else poll_interval)

    def service_actions(self):  # serve_forever's, after each connection taken in and every poll_interval
        if self.stopped_by:
            raise self.stopped_by
        for waiting in self.connections.make_room():
            self.start_thread(*waiting)

    def start_thread(self, request, client_address):
        try:
            with self.starting:
                super().process_request(request, client_address)
        except BaseException:
            self.finished(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.finished(request)

    def finished(self, request):
        nxt = self.connections.leave(request)
        if nxt:  # the first in line takes the place
            self.start_thread(*nxt)

    def handle_error(self, request, client_address):
        """One line for an unexpected error, not socketserver's traceback; a client that went away
        (reset, broken pipe, out of time, dropped), or a request cut off by stopping, is no news."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)) and not self.work.stopped:
            print(f"draw.py: a request from {client_address[0]} failed: {error!r}"[:300], file=sys.stderr)

    def server_close(self):
        """Stop at once, whatever is queued: waiting images are dropped, connections closed."""
        self.work.stop()
        self.connections.close_all()
        super().server_close()
