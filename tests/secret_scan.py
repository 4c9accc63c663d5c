"""Searches what a run left behind (logs, stats dumps, database files) for any plaintext key
the tests used. A hit fails the test that owned the process."""

import re
from pathlib import Path

import keys

# Anything shaped like a key; each candidate is then looked up among the issued keys, so a
# scan costs one pass over the data however many keys a run made.
CANDIDATE = re.compile(rb"[sp]k_[A-Za-z0-9_]+")


def scan(paths):
    """Raises AssertionError naming the file (never the key) when a plaintext key is found."""
    issued = {k.encode() for k in keys.issued()}
    if not issued:
        return
    lengths = {len(k) for k in issued}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        data = path.read_bytes()
        for match in CANDIDATE.finditer(data):
            token = match.group()
            # A key may run into more token characters in the text: try each key length.
            hit = next((token[:n] for n in lengths if token[:n] in issued), None)
            if hit:
                hint = hit[:8].decode() + "…" + hit[-4:].decode()
                raise AssertionError(f"plaintext key {hint} found in {path}")
