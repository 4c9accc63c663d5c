"""Byte-exact HTTP/1.1 and HTTP/2 clients for inputs httpx normalises, merges or refuses:
repeated headers, non-UTF-8 or control bytes in values, dot segments and `//` in paths.

Both return a `Response` with `status`, `headers` (lower-case name → list of values, as
str decoded latin-1) and `body` (bytes); `status` is None when Envoy closed the connection
(or reset the stream) without an answer."""

import json
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class Response:
    status: int | None
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    reset: bool = False
    timed_out: bool = False

    def header(self, name):
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self):
        return json.loads(self.body)

    @property
    def code(self):
        """The keygate error code of a refusal, or None."""
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def _address(url):
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", "loopback only"
    return parts.hostname, parts.port


def _b(x):
    return x if isinstance(x, bytes) else x.encode("latin-1")


def http1(url, method="GET", target="/", headers=(), body=b"", timeout=5):
    """Sends one HTTP/1.1 request exactly as given (`headers` is a list of (name, value),
    str or bytes, repeated names kept) and reads one response."""
    lines = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"host: 127.0.0.1"]
    for name, value in headers:
        lines.append(_b(name) + b": " + _b(value))
    lines.append(b"connection: close")
    if body:
        lines.append(b"content-length: " + str(len(body)).encode())
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    return http1_raw(url, raw, timeout=timeout, head=method.upper() == "HEAD")


def http1_raw(url, raw, timeout=5, head=False):
    """Sends raw bytes on a new connection and parses the first response."""
    with socket.create_connection(_address(url), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            parsed = _parse_http1(data, head)
            if parsed is not None:
                return parsed
    return _parse_http1(data, head, final=True) or Response(status=None)


def _parse_http1(data, head, final=False):
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head_lines = data[:end].split(b"\r\n")
    try:
        status = int(head_lines[0].split(b" ")[1])
    except (IndexError, ValueError):
        return Response(status=None)
    headers = {}
    for line in head_lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower().decode("latin-1"), []).append(
            value.strip().decode("latin-1")
        )
    body = data[end + 4:]
    if head or status in (204, 304):
        return Response(status, headers, b"")
    length = headers.get("content-length")
    if length is not None:
        n = int(length[0])
        if len(body) < n:
            return None if not final else Response(status, headers, body)
        return Response(status, headers, body[:n])
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        decoded, complete = _dechunk(body)
        if not complete and not final:
            return None
        return Response(status, headers, decoded)
    return None if not final else Response(status, headers, body)


def _dechunk(body):
    out = b""
    while True:
        line_end = body.find(b"\r\n")
        if line_end < 0:
            return out, False
        size = int(body[:line_end].split(b";")[0], 16)
        if size == 0:
            return out, True
        chunk = body[line_end + 2: line_end + 2 + size]
        if len(chunk) < size:
            return out, False
        out += chunk
        body = body[line_end + 4 + size:]


def http2(url, method="GET", target="/", headers=(), body=b"", timeout=5):
    """Sends one HTTP/2 request (prior knowledge) with the `h2` library, its own header
    validation and normalisation off, so repeated, odd or non-UTF-8 values go out as given."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    with socket.create_connection(_address(url), timeout=timeout) as s:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        request_headers = [
            (b":method", _b(method)),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", _b(target)),
        ] + [(_b(n), _b(v)) for n, v in headers]
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, request_headers, end_stream=not body)
        if body:
            conn.send_data(stream, body, end_stream=True)
        s.sendall(conn.data_to_send())
        response = Response(status=None)
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                return response
            except socket.timeout:
                # Envoy refuses some malformed HTTP/2 requests by closing the connection after
                # its delayed-close timeout (1 s), without a frame: callers expecting that pass
                # a short timeout.
                response.timed_out = True
                return response
            if not data:
                return response
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return response
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    for name, value in event.headers:
                        name = name.decode("latin-1")
                        if name == ":status":
                            response.status = int(value)
                        else:
                            response.headers.setdefault(name, []).append(value.decode("latin-1"))
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    response.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    _close(s, conn)
                    return response
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    response.reset = True
                    _close(s, conn)
                    return response
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return response
            out = conn.data_to_send()
            if out:
                s.sendall(out)


def _close(sock, conn):
    try:
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass


def send(protocol, url, **kwargs):
    """`http1` or `http2` by name."""
    return {"http1": http1, "http2": http2}[protocol](url, **kwargs)
