"""Test keys in keygate's format, made independently of the Rust code so the two cross-check:
prefix + 32 base62 random characters + 6 base62 characters of CRC-32 (prefix + random)."""

import hashlib
import secrets
import threading
import zlib

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIXES = {
    ("secret", "test"): "sk_test_",
    ("publishable", "test"): "pk_test_",
    ("secret", "production"): "sk_",
    ("publishable", "production"): "pk_",
}


def checksum(text):
    value = zlib.crc32(text.encode())
    out = []
    for _ in range(6):
        out.append(BASE62[value % 62])
        value //= 62
    return "".join(reversed(out))


# Every plaintext key this test process made or was shown: after each Envoy and keygatectl
# run, their logs, stats and database files are searched for these (see secret_scan.py).
# Threads add keys while a scan runs (the soak): reads go through `issued()`, a copy.
ISSUED = set()
_ISSUED_LOCK = threading.Lock()


def remember(key):
    with _ISSUED_LOCK:
        ISSUED.add(key)
    return key


def issued():
    """A snapshot of the issued keys, safe to iterate while other threads make more."""
    with _ISSUED_LOCK:
        return set(ISSUED)


def make_key(key_type="secret", environment="test"):
    body = "".join(secrets.choice(BASE62) for _ in range(32))
    signed = PREFIXES[(key_type, environment)] + body
    return remember(signed + checksum(signed))


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def entry(key, account_id, key_id, key_type, environment, **extra):
    return {
        "digest": digest(key),
        "account_id": account_id,
        "key_id": key_id,
        "type": key_type,
        "environment": environment,
        **extra,
    }
