"""Searches what a run left behind (logs, stats dumps, database files) for any plaintext key
the tests used. A hit fails the test that owned the process."""

from pathlib import Path

import keys


def scan(paths):
    """Raises AssertionError naming the file (never the key) when a plaintext key is found."""
    secrets = [k.encode() for k in keys.ISSUED]
    if not secrets:
        return
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        data = path.read_bytes()
        for secret in secrets:
            if secret in data:
                hint = secret[:8].decode() + "…" + secret[-4:].decode()
                raise AssertionError(f"plaintext key {hint} found in {path}")
