"""Bulk import for migrations, end to end: `keygatectl key import --file` with 10,000 keys
(half as plaintext, half by digest), a file with bad lines refused whole (nothing written,
every bad line named, no key echoed), then the good file reaching a real Envoy that syncs
from keygatectl (the wasm filter, or the native module under KEYGATE_FRONTEND=native), and a
second run changing nothing."""

import json
import random
import subprocess

import pytest

import harness

from ctl import CTL, Keygatectl
import keys as keylib
from test_lifecycle import answer, start_envoy, wait_for

COUNT = 10_000


@pytest.fixture
def stack(request, upstream):
    ctl = Keygatectl().start()
    request.addfinalizer(ctl.stop)
    envoy = start_envoy(upstream, ctl)
    request.addfinalizer(envoy.stop)
    return ctl, envoy


def import_file(ctl, path, json_out=False, dry_run=False):
    argv = [str(CTL), "--database", str(ctl.db)] + (["--json"] if json_out else [])
    argv += ["key", "import", "--file", str(path)] + (["--dry-run"] if dry_run else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def jsonl_line(key, account, index):
    """Even lines carry the plaintext (hashed by the CLI), odd ones its digest."""
    if index % 2 == 0:
        return {"key": key, "account": account, "name": f"legacy app {index}"}
    kind = "secret" if key.startswith("sk_") else "publishable"
    environment = "test" if "_test_" in key else "production"
    return {"digest": keylib.digest(key), "type": kind, "environment": environment,
            "account": account, "expires_at": "2099-01-01T00:00:00Z"}


def test_ten_thousand_keys_refused_whole_for_bad_lines_then_imported_reach_envoy(stack, tmp_path):
    ctl, envoy = stack
    account, account_keys = ctl.create_account()
    wait_for(lambda: answer(envoy, account_keys["sk_test"]["key"])[0] == 200)
    kinds = [("secret", "test"), ("secret", "production"), ("publishable", "test")]
    plaintexts = [keylib.make_key(*kinds[i % len(kinds)]) for i in range(COUNT)]
    lines = [json.dumps(jsonl_line(k, account, i)) for i, k in enumerate(plaintexts)]

    # Three bad lines among 10,000: an unknown account, a key pasted as a digest, broken JSON.
    bad = list(lines)
    bad[99] = json.dumps({"key": plaintexts[99], "account": "acct_missing"})
    bad[4999] = json.dumps({"digest": plaintexts[4999], "type": "secret",
                            "environment": "test", "account": account})
    bad[9999] = '{"key": "%s", "account": ' % plaintexts[9999]
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text("\n".join(bad) + "\n")
    before = ctl.store_status()["version"]
    refused = import_file(ctl, bad_file)
    assert refused.returncode == 2, refused.stderr
    assert "line 5000: digest: digest looks like a plaintext API key" in refused.stderr
    assert "line 10000: line: not valid JSON" in refused.stderr
    assert not any(k[8:] in refused.stderr for k in plaintexts), "a key was echoed"
    # The same file with only the account wrong: checked against the store, refused too.
    bad[4999], bad[9999] = lines[4999], lines[9999]
    bad_file.write_text("\n".join(bad) + "\n")
    refused = import_file(ctl, bad_file)
    assert refused.returncode == 2, refused.stderr
    assert "line 100: account: no account acct_missing" in refused.stderr
    assert ctl.store_status()["version"] == before, "nothing was written"
    assert len(ctl.cli("key", "list", "--account", account)["keys"]) == 4
    assert answer(envoy, plaintexts[0])[0] == 401

    good_file = tmp_path / "keys.jsonl"
    good_file.write_text("\n".join(lines) + "\n")
    dry = import_file(ctl, good_file, json_out=True, dry_run=True)
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["added"]) == COUNT
    assert ctl.store_status()["version"] == before

    done = import_file(ctl, good_file, json_out=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["added"]) == COUNT and report["unchanged"] == []
    assert report["version"] > before

    # Through Envoy: a sample of plaintext and digest lines, of every kind, on every worker.
    sample = [0, 1, 2, 3, COUNT - 1] + random.Random(7).sample(range(COUNT), 20)
    wait_for(lambda: all(answer(envoy, plaintexts[i])[0] in (200, 403) for i in sample),
             timeout=20)
    with harness.connections_on_every_worker(envoy) as workers:
        for i in sample:
            expected = (200, None) if plaintexts[i].startswith("sk_") else \
                (403, "insufficient_permissions")
            assert workers.everywhere(plaintexts[i]) == {expected}, i
    # Names stay out of the key map; the digest lines' expiry is in it.
    status, _, body = ctl.key_map()
    assert status == 200
    assert b"legacy app" not in body
    entries = {e["digest"]: e for e in json.loads(body)["keys"]}
    assert entries[keylib.digest(plaintexts[1])]["expires_at"] == 4070908800
    assert "expires_at" not in entries[keylib.digest(plaintexts[0])]

    # Again: every key is already stored as asked; nothing changes.
    again = import_file(ctl, good_file, json_out=True)
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["added"] == [] and len(rerun["unchanged"]) == COUNT
    assert rerun["version"] == report["version"]
    events = ctl.cli("audit", "--account", account)["events"]
    imports = [e for e in events if e["action"] == "key.imported"]
    assert len(imports) == 1 and len(imports[0]["key_ids"]) == COUNT
    assert imports[0]["actor"]["kind"] == "cli"
