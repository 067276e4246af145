"""Bounded memory and a shutdown that always finishes, against live servers: feedback's
own body limit and byte budget, feedback parsed off the event loop and counted once per
request, the in-flight limit, and SIGTERM with a prediction log nobody reads."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading

import httpx
import numpy as np
import orjson
import pandas as pd
from serving_helpers import Server, serving, start_server, wait_for

INFER = "/v2/models/cancer/infer"
FEEDBACK = "/v2/models/cancer/feedback"


def infer_body(rows: pd.DataFrame, request_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.to_numpy(np.float32).ravel().tolist()}
        ]
    }  # fmt: skip
    if request_id:
        body["id"] = request_id
    return body


def client_port(r: httpx.Response) -> int:
    port: int = r.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


def one_connection(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=1))


# ------------------------------------------------------------------ feedback limit


def test_a_feedback_body_over_its_own_limit_is_a_413_and_keeps_the_connection(cancer):
    limit = 1024 * 1024  # max_feedback_bytes' default, below max_body_bytes'
    over = orjson.dumps([{"id": "x", "truth": 1}] * (limit // 20))
    assert limit < len(over) < 2 * limit
    with one_connection(cancer) as http:
        r = http.post(FEEDBACK, content=over, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "KUBELOOP_SERVING_MAX_FEEDBACK_BYTES" in r.json()["error"]
        port = client_port(r)

        # no Content-Length: caught while streaming, mid-body or in its last part
        for parts in ([over[i : i + 65536] for i in range(0, len(over), 65536)],
                      [over[:limit], over[limit:]]):  # fmt: skip
            r = http.post(FEEDBACK, content=iter(parts))
            assert r.status_code == 413
            assert "over the limit of 1048576 bytes" in r.json()["error"]
            assert "close" not in r.headers.get("connection", "")
            assert client_port(r) == port
        # the same size is fine for inference (max_body_bytes): a 400, not a 413
        r = http.post(INFER, content=over, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert client_port(r) == port
    head = declare_only(cancer.url, FEEDBACK, 5 * limit)  # far over: not read, closed
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()


# ---------------------------------------------------------------- feedback budget


def test_feedback_over_its_byte_budget_is_a_429_and_inference_goes_on(cancer_model, cancer_rows):
    """A full bucket takes one largest body; the next, before the budget has refilled,
    gets 429 with Retry-After before it is read (the answer closes the connection); a
    small refused body is read and dropped, so its connection stays usable. Refused
    bodies are counted, never scored."""
    # 1 KB/s: what refills while the test runs (seconds) changes none of the answers
    env = {"KUBELOOP_SERVING_FEEDBACK_BYTES_PER_SECOND": "1000"}
    body = big_feedback(29_000)  # 917 KB: the bucket (1 MiB) keeps 132 KB
    small = big_feedback(2_000)  # 61 KB (under 64 KiB: read when refused): two fit
    with serving(cancer_model, "--name", "cancer", env=env) as server:
        with one_connection(server) as http:
            assert http.post(FEEDBACK, content=body).status_code == 200
            refused = http.post(FEEDBACK, content=body)
            assert refused.status_code == 429, refused.text
            assert "KUBELOOP_SERVING_FEEDBACK_BYTES_PER_SECOND" in refused.json()["error"]
            assert 700 <= int(refused.headers["retry-after"]) <= 900
            assert refused.headers["connection"] == "close"
        with one_connection(server) as http:
            answers = [http.post(FEEDBACK, content=small) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 429, 429], answers[-1].text
            assert "close" not in answers[-1].headers.get("connection", "")
            assert len({client_port(a) for a in answers}) == 1
            r = http.post(INFER, json=infer_body(cancer_rows.iloc[:1]))
            assert r.status_code == 200, r.text
            assert client_port(r) == client_port(answers[0])
        assert server.metric("kubeloop_feedback_refused_total") == 3
        unknown = server.metric("kubeloop_feedback_total", model="cancer", result="unknown")
        assert unknown == 29_000 + 2 * 2_000  # what was refused was not scored


# --------------------------------------------------------------- feedback dedupe


def test_replayed_feedback_counts_once(cancer, cancer_rows, data_dir):
    truth = pd.read_csv(data_dir / "cancer.csv")["target"]
    with cancer.client() as http:
        for i in range(5):
            r = http.post(INFER, json=infer_body(cancer_rows.iloc[i : i + 1], f"dedupe-{i}"))
            assert r.status_code == 200
        labels = [{"id": f"dedupe-{i}", "truth": int(truth[i])} for i in range(5)]
        first = http.post(FEEDBACK, json=labels).json()
        assert (first["matched"], first["duplicates"], first["unknown"]) == (5, 0, 0)
        for _ in range(10):
            r = http.post(FEEDBACK, json=labels)
            assert r.status_code == 200
            doc = r.json()
            assert (doc["matched"], doc["duplicates"], doc["unknown"]) == (0, 5, 0)
            assert doc["rows"] == first["rows"]
    assert cancer.metric("kubeloop_feedback_total", model="cancer", result="duplicate") == 50


# ------------------------------------------------------- feedback off the event loop


def big_feedback(items: int) -> bytes:
    """A feedback body of ``items`` unknown ids: slow to decode and score."""
    return orjson.dumps([{"id": f"nobody-{i}", "truth": i % 2} for i in range(items)])


def test_inference_answers_while_a_feedback_body_is_processed(cancer_model, cancer_rows):
    env = {
        "KUBELOOP_SERVING_MAX_FEEDBACK_BYTES": str(256 * 1024 * 1024),
        "KUBELOOP_SERVING_FEEDBACK_BYTES_PER_SECOND": "0",  # bodies this big, one after another
    }
    with serving(cancer_model, "--name", "cancer", env=env) as server:
        conclusive = False
        items = 200_000
        for _ in range(4):  # a larger body when the last one was done too soon to tell
            conclusive = answered_meanwhile(server, cancer_rows, items)
            if conclusive:
                break
            items *= 2
        assert conclusive, "every feedback body was processed before an inference was sent"


def answered_meanwhile(server: Server, rows: pd.DataFrame, items: int) -> bool:
    """Send a big feedback body; once the server processes it (pending on /metrics),
    infer. True when the feedback was still pending after the inference answered."""
    body = big_feedback(items)
    replies: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            replies.append(http.post(FEEDBACK, content=body))

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(
            "the feedback body to be processed",
            lambda: not sender.is_alive() or server.metric("kubeloop_feedback_pending") == 1,
            timeout=120,
        )
        with server.client() as http:
            r = http.post(INFER, json=infer_body(rows.iloc[:1]))
        assert r.status_code == 200, r.text
        still = sender.is_alive() and server.metric("kubeloop_feedback_pending") == 1
    finally:
        sender.join(600)
    assert replies[0].status_code == 200, replies[0].text
    assert replies[0].json()["unknown"] == items
    return still


# ------------------------------------------------------------------ in-flight limit


def raw_request(url: str, path: str, body: bytes) -> socket.socket:
    """A connection with a POST whose body is sent but for its last byte: held in
    flight until :func:`finish` sends it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode()
        + body[:-1]
    )
    return sock


def finish(sock: socket.socket, body: bytes) -> bytes:
    """Send the held body's last byte; the status line and headers of the answer."""
    sock.sendall(body[-1:])
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {reply!r}"
        reply += chunk
    sock.close()
    return reply.split(b"\r\n\r\n", 1)[0]


def declare_only(url: str, path: str, length: int) -> bytes:
    """Send only the head of a POST declaring a ``length``-byte body; the answer's head
    (the connection must be closed by the server for this to return)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply.split(b"\r\n\r\n", 1)[0]


def test_past_max_in_flight_requests_get_503_with_retry_after(cancer_model, cancer_rows):
    env = {"KUBELOOP_SERVING_MAX_IN_FLIGHT": "2"}
    body = orjson.dumps(infer_body(cancer_rows.iloc[:1]))
    with serving(cancer_model, "--name", "cancer", env=env) as server:
        held = [raw_request(server.url, INFER, body) for _ in range(2)]
        wait_for(
            "two requests in flight", lambda: server.metric("kubeloop_requests_in_flight") == 2
        )
        with one_connection(server) as http:
            r = http.post(INFER, content=body)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "KUBELOOP_SERVING_MAX_IN_FLIGHT" in r.json()["error"]
            port = client_port(r)
            assert http.get("/v2/models/cancer").status_code == 503
            # probes and scrapes are never refused
            assert http.get("/v2/health/ready").status_code == 200
            assert http.get("/v2/health/live").status_code == 200
            assert http.get("/v2/models/cancer/ready").status_code == 200
            assert http.get("/metrics").status_code == 200
            # a refused body declared far over the limit is not read: the connection closes
            head = declare_only(server.url, INFER, 64 * 1024 * 1024)
            assert head.startswith(b"HTTP/1.1 503")
            assert b"connection: close" in head.lower()
            for sock in held:
                assert finish(sock, body).startswith(b"HTTP/1.1 200")
            wait_for("nothing in flight", lambda: server.metric("kubeloop_requests_in_flight") == 0)
            r = http.post(INFER, content=body)
            assert r.status_code == 200
            assert client_port(r) == port  # the refusals kept the connection
        assert server.metric("kubeloop_requests_rejected_total") == 3


# ------------------------------------------------------------------------- shutdown


def test_a_fifo_nobody_reads_neither_blocks_start_up_nor_sigterm(
    cancer_model, cancer_rows, tmp_path
):
    fifo = tmp_path / "predictions.fifo"
    os.mkfifo(fifo)
    server = start_server(cancer_model, "--name", "cancer", "--prediction-log", str(fifo))
    try:  # start_server waited for readiness
        with server.client() as http:
            for i in range(5):
                r = http.post(INFER, json=infer_body(cancer_rows.iloc[:2], f"kept-{i}"))
                assert r.status_code == 200
        assert "has no reader yet" in server.log
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert "10 line(s) not written by shutdown" in server.log
    finally:
        server.stop(signal.SIGKILL)


def pipe_bytes(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is ``fd``."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0])


def test_sigterm_with_a_stalled_pipe_and_a_held_request_exits_within_the_budget(
    cancer_model, cancer_rows, tmp_path
):
    fifo = tmp_path / "predictions.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    env = {"KUBELOOP_SERVING_DRAIN_SECONDS": "1", "KUBELOOP_SERVING_SHUTDOWN_TIMEOUT": "4"}
    server = start_server(cancer_model, "--name", "cancer", "--prediction-log", str(fifo), env=env)
    try:
        with server.client() as http:
            rows = infer_body(cancer_rows.iloc[:20])

            def flowing() -> bool:
                assert http.post(INFER, json=rows).status_code == 200
                return pipe_bytes(reader) >= 32 * 1024

            wait_for("prediction log lines in the pipe", flowing, timeout=120)
            # 800 more lines of 100+ bytes: more than a pipe holds (64 KiB), nobody reads
            for _ in range(40):
                assert http.post(INFER, json=rows).status_code == 200
        body = orjson.dumps(infer_body(cancer_rows.iloc[:1]))
        held = raw_request(server.url, INFER, body)  # in flight, never finished
        wait_for("the held request", lambda: server.metric("kubeloop_requests_in_flight") == 1)
        server.proc.send_signal(signal.SIGTERM)
        # a bound on correctness (without it the process never exits), not a timing
        code = server.proc.wait(1 + 4 + 10)
        held.close()
        assert code == 0, server.log
        assert "not written by shutdown" in server.log
    finally:
        server.stop(signal.SIGKILL)
        os.close(reader)


def test_the_watchdog_ends_a_process_whose_shutdown_hangs():
    script = (
        "import threading\n"
        "from kubeloop.serving.cli import watchdog\n"
        "watchdog(0.5)\n"
        "threading.Event().wait()\n"  # hangs forever but for the watchdog
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert "shutdown did not finish within 0.5s" in proc.stderr
