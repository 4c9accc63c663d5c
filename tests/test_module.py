"""The shipped filter modules themselves: what Envoy is asked to load. The wasm module's
checks run with the wasm suites, the native module's with the native ones."""

import os
import re
import subprocess

import pytest

import harness
from conftest import start_envoy

wasm_only = pytest.mark.skipif(harness.NATIVE_MODE, reason="the wasm module's own checks")
native_only = pytest.mark.skipif(not harness.NATIVE_MODE, reason="the native module's own checks")

# Issue 9: the filter module under 150 KB (decimal), as `make` builds it.
MODULE_SIZE_LIMIT = 150_000


@wasm_only
def test_the_filter_module_stays_under_150_kb():
    size = harness.WASM.stat().st_size
    assert size < MODULE_SIZE_LIMIT, f"keygate.wasm is {size:,} bytes"


def _imports(wasm: bytes):
    """(module, name) of every function the wasm module imports (its import section)."""
    def uleb(at):
        value = shift = 0
        while True:
            byte = wasm[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, at

    def name(at):
        size, at = uleb(at)
        return wasm[at:at + size].decode(), at + size

    at, found = 8, []
    while at < len(wasm):
        section, at = wasm[at], at + 1
        size, at = uleb(at)
        if section == 2:  # imports
            count, cursor = uleb(at)
            for _ in range(count):
                module, cursor = name(cursor)
                field, cursor = name(cursor)
                kind, cursor = wasm[cursor], cursor + 1
                assert kind == 0, f"non-function import {module}.{field}"
                _, cursor = uleb(cursor)  # type index
                found.append((module, field))
            return found
        at += size
    return found


@wasm_only
def test_the_filter_imports_only_proxy_wasm_calls_and_random_get():
    """No WASI I/O, no libc symbol left unresolved: Envoy provides exactly these."""
    imports = _imports(harness.WASM.read_bytes())
    assert imports, "the module imports nothing?"
    others = [
        (module, field) for module, field in imports
        if not (module == "env" and re.fullmatch(r"proxy_[a-z_]+", field))
        and (module, field) != ("wasi_snapshot_preview1", "random_get")
    ]
    assert others == []


def _dynamic_symbols(path, *flags):
    out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


@native_only
def test_the_native_module_exports_only_envoy_hooks():
    """Nothing of keygate's (or its crates') internals is visible to Envoy or other modules."""
    exported = _dynamic_symbols(harness.NATIVE, "--defined-only")
    assert "envoy_dynamic_module_on_http_filter_request_headers" in exported
    others = {s for s in exported if not s.startswith("envoy_dynamic_module_on_")}
    assert others <= {"_init", "_fini"}, sorted(others)


@native_only
def test_the_envoy_in_use_speaks_the_native_modules_abi(upstream):
    """The module is built for one Envoy release line's ABI: Envoy must name the same ABI
    version and provide every callback the module calls (an Envoy without one would refuse
    to load it; this says which)."""
    envoy = start_envoy(upstream)
    try:
        binary = os.readlink(f"/proc/{envoy.proc.pid}/exe")
        log = envoy.read_log()
    finally:
        envoy.stop()
    assert "Dynamic module ABI version v0.2.0 matched." in log, log[-3000:]
    wanted = {s for s in _dynamic_symbols(harness.NATIVE, "--undefined-only")
              if s.startswith("envoy_dynamic_module_callback_")}
    assert len(wanted) >= 10, wanted
    provided = _dynamic_symbols(binary, "--defined-only")
    assert wanted <= provided, sorted(wanted - provided)
