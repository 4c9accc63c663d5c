"""A stand-in for Envoy's global rate-limit service (envoy.service.ratelimit.v3), on gRPC
over loopback: it records every request's domain and descriptors, and answers OVER_LIMIT
for the descriptor values it is told to. The messages are small enough to read and write
by hand (protobuf wire format), so no generated code is needed."""

import threading
from concurrent import futures

import grpc

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
OK, OVER_LIMIT = 1, 2


def _varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _fields(data):
    """(field number, value) pairs of a message: varints as ints, the rest as bytes."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        else:
            raise ValueError(f"wire type {wire} not expected here")
        yield number, value


def parse_request(data):
    """RateLimitRequest → (domain, [[(key, value), …] per descriptor])."""
    domain, descriptors = "", []
    for number, value in _fields(data):
        if number == 1:
            domain = value.decode()
        elif number == 2:
            entries = []
            for n, entry in _fields(value):
                if n == 1:
                    kv = dict(_fields(entry))
                    entries.append((kv.get(1, b"").decode(), kv.get(2, b"").decode()))
            descriptors.append(entries)
    return domain, descriptors


def response(code):
    """RateLimitResponse with only overall_code (field 1, an enum)."""
    return bytes([0x08, code])


class RateLimitService:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.over_limit = set()  # descriptor values answered OVER_LIMIT
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.ratelimit.v3.RateLimitService",
            {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
                self._should_rate_limit,
                request_deserializer=lambda b: b, response_serializer=lambda b: b)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _should_rate_limit(self, request, context):
        domain, descriptors = parse_request(request)
        with self.lock:
            self.requests.append((domain, descriptors))
            over = any(value in self.over_limit for d in descriptors for _, value in d)
        return response(OVER_LIMIT if over else OK)

    def stop(self):
        self.server.stop(grace=None)
