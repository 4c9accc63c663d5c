"""keygatectl's operator page in a real headless Chromium: sign in (a wrong token first),
create an account, roll a key with a grace period and see the new key once, reload and see it
masked, disable, enable, revoke, roll now, sign out. The page and the CLI, doing the same
things, leave the same state; a key rolled on the page is refused by Envoy. A screenshot of
the account page is saved (see SCREENSHOT)."""

import hashlib
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Run by `bash tests/browser/run.sh`, which installs Chromium, chromedriver and Selenium and
# sets KEYGATE_BROWSER=1; a plain `pytest tests` skips them.
pytestmark = pytest.mark.skipif(os.environ.get("KEYGATE_BROWSER") != "1",
                                reason="browser tests: run `bash tests/browser/run.sh`")
pytest.importorskip("selenium", reason="browser tests: run `bash tests/browser/run.sh`")

import harness  # noqa: E402
from ctl import Keygatectl  # noqa: E402
from ui import KeysPage, wait_for  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
# Loopback only: no background fetches, updates, sync or QUIC.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]

# Selenium must never fetch a driver or report usage: it gets both paths, and these say so.
os.environ.setdefault("SE_OFFLINE", "true")
os.environ.setdefault("SE_AVOID_STATS", "true")


@pytest.fixture(scope="module")
def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: run `bash tests/browser/run.sh`, which installs it")
    profile = tempfile.mkdtemp(prefix="keygate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    log = Path(profile) / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(log)), options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chrome):
    """The module's browser with no cookies and the default window size."""
    chrome.delete_all_cookies()
    chrome.set_window_size(1280, 900)
    yield chrome
    chrome.delete_all_cookies()


# The account page's screenshot. `KEYGATE_SCREENSHOT=docs/keys-page.png` refreshes the one
# the README shows; by default it goes under target/ (not committed).
SCREENSHOT = harness.ROOT / os.environ.get("KEYGATE_SCREENSHOT", "target/browser/keys-page.png")
LABELS = {
    ("secret", "test"): "Secret test key",
    ("publishable", "test"): "Publishable test key",
    ("secret", "production"): "Secret production key",
    ("publishable", "production"): "Publishable production key",
}


@pytest.fixture
def ctl():
    ctl = Keygatectl().start()
    ctl.base = f"http://127.0.0.1:{ctl.port}"
    yield ctl
    ctl.stop()  # also searches its log and database for every plaintext key seen


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def cli_keys(ctl, account):
    return {k["key_id"]: k for k in ctl.cli("key", "list", "--account", account)["keys"]}


def by_label(shown, label):
    (key_id,) = [k for k, (l, _) in shown.items() if l == label]
    return key_id


def shape(keys):
    """An account's keys as state, without ids or times: kind, status, grace length, the
    status of the key that replaced it, disabled or revoked, origin."""
    by_id = {k["key_id"]: k for k in keys}
    out = []
    for k in keys:
        grace = k["expires_at"] - k["rolled_at"] if k["expires_at"] and k["rolled_at"] else None
        successor = by_id[k["replaced_by"]]["status"] if k["replaced_by"] else None
        out.append((k["type"], k["environment"], k["status"], grace, successor,
                    k["disabled_at"] is not None, k["revoked_at"] is not None, k["origin"]))
    return sorted(out, key=repr)


def page_audit(driver):
    """What a person (and a screen reader) gets: labels on every field, a name on every
    button and link, nothing fetched from elsewhere, no inline script or style."""
    return driver.execute_script("""
        const fields = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')];
        const unlabeled = fields.filter(e => !(e.labels && e.labels.length) &&
            !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.outerHTML);
        const nameless = [...document.querySelectorAll('button, a')]
            .filter(e => !e.textContent.trim() && !e.getAttribute('aria-label')).map(e => e.outerHTML);
        const external = performance.getEntriesByType('resource').map(r => r.name)
            .filter(u => !u.startsWith(location.origin));
        return {unlabeled, nameless, external,
                inline: document.querySelectorAll('script:not([src]), [style]').length,
                lang: document.documentElement.lang,
                overflow: document.documentElement.scrollWidth - window.innerWidth};
    """)


def fetch(url, cookie=None):
    """(status, Location) of a GET that does not follow redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"cookie": cookie} if cookie else {})
    try:
        with opener.open(request, timeout=5) as r:
            return r.status, r.headers.get("location")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("location")


def test_sign_in_create_roll_once_shown_revoke_sign_out(ctl, browser):
    started = time.monotonic()
    page = KeysPage(browser, ctl.base)

    # Signed out, the page leads to sign-in.
    page.open("/ui/accounts")
    assert page.path == "/ui/login"

    # A wrong token: a clear message; and each failure in a row makes the next answer wait longer.
    first = page.sign_in("wrong-token-0123456789abcdef")
    assert page.path == "/ui/login"
    (message,) = page.notices()
    assert "Wrong admin token" in message and "in a row: 1" in message
    assert "this one waited 0.5 s" in message, message
    second = page.sign_in("another-wrong-token-0123456789")
    (message,) = page.notices()
    assert "in a row: 2" in message and "this one waited 1 s" in message, message
    # The server really waited (a lower bound: a slow machine only adds to it).
    assert first >= 0.5 and second >= 1.0, (first, second)
    assert browser.get_cookie("keygate_session") is None

    # The right token: a session cookie, HttpOnly, SameSite=Strict, scoped to /ui, expiring.
    page.sign_in(ctl.token)
    assert page.path == "/ui/accounts"
    cookie = browser.get_cookie("keygate_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert 7 * 3600 < cookie["expiry"] - time.time() <= 8 * 3600 + 5
    assert browser.execute_script("return document.cookie") == "", "scripts cannot read it"

    # Create an account: its four keys appear once, in full, with copy buttons and a warning.
    account = page.create_account("Acme Robotics")
    assert page.find("h1").text == "Acme Robotics"
    shown = page.new_keys()
    assert sorted(label for label, _ in shown.values()) == sorted(LABELS.values())
    assert "will not be shown again" in page.text(".reveal")
    assert len(page.find_all(".reveal button.copy")) == 4
    stored = cli_keys(ctl, account)
    for key_id, (label, plaintext) in shown.items():
        key = stored[key_id]
        assert LABELS[(key["type"], key["environment"])] == label
        assert sha256(plaintext) == key["digest"], "the page shows the key the CLI lists"

    # The copy button puts the whole key on the clipboard.
    browser.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": ctl.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    page.find(".reveal button.copy[data-copy='newkey-0']").click()
    wait_for(lambda: page.text("#copied-0") == "Copied")
    clipboard = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));")
    assert clipboard == page.text("#newkey-0")

    # Reloading never shows them again: masked, prefix and last 4.
    browser.refresh()
    assert not page.find_all(".reveal")
    for _, plaintext in shown.values():
        assert plaintext not in browser.page_source
    rows = page.rows()
    for key_id, (_, plaintext) in shown.items():
        assert rows[key_id]["status"] == "active"
        assert rows[key_id]["hint"] == stored[key_id]["hint"]
        assert re.fullmatch(r"(sk|pk)_(test_)?…\w{4}", rows[key_id]["hint"])
        assert rows[key_id]["hint"].endswith(plaintext[-4:])

    # Search finds an account by part of its name, and by a key id. Names are text, never markup.
    ctl.cli("account", "create", "--name", "Hooli <b>bold</b> & <script>alert(1)</script>")
    assert page.search("robot") == ["Acme Robotics"]
    assert page.search(next(iter(shown))) == ["Acme Robotics"]
    assert page.search("hooli") == ["Hooli <b>bold</b> & <script>alert(1)</script>"]
    assert not page.find_all("table.accounts b") and not page.find_all("main script")
    assert page.search("no-such-account") == []
    page.open(f"/ui/accounts/{account}")

    # Roll the secret test key with a 24-hour grace period: the new key shows once.
    sk_test = by_label(shown, "Secret test key")
    page.roll(sk_test, "in 24 hours")
    ((new_sk_test, (label, new_plaintext)),) = page.new_keys().items()
    assert label == "Secret test key" and new_plaintext.startswith("sk_test_")
    assert "will not be shown again" in page.text(".reveal")
    assert any("keeps working until" in n for n in page.notices())
    rows = page.rows()
    assert rows[sk_test]["status"] == "expiring"
    assert re.fullmatch(r"expiring at \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in (24 h|23 h 59 min)\)",
                        rows[sk_test]["state"]), rows[sk_test]["state"]
    assert rows[new_sk_test]["status"] == "active"
    page.open("/ui/accounts")
    browser.back()  # back from another page: not shown again either
    assert page.path == f"/ui/accounts/{account}"
    assert not page.find_all(".reveal") and new_plaintext not in browser.page_source
    browser.refresh()
    assert not page.find_all(".reveal") and new_plaintext not in browser.page_source
    assert page.rows()[new_sk_test]["hint"].endswith(new_plaintext[-4:])

    # Disable the publishable production key; the screenshot shows the account page then.
    pk_production = by_label(shown, "Publishable production key")
    page.act(pk_production, "disable")
    assert page.rows()[pk_production]["state"].startswith("disabled since")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, max(700, height + 140))
    browser.refresh()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    audit = page_audit(browser)
    assert audit["unlabeled"] == [] and audit["nameless"] == [] and audit["external"] == []
    assert audit["inline"] == 0 and audit["lang"] == "en" and audit["overflow"] <= 0

    # A phone-width screen: nothing sticks out sideways, and the forms are still there.
    browser.set_window_size(390, 844)
    browser.refresh()
    assert page_audit(browser)["overflow"] <= 0
    assert page.row(new_sk_test).find_element("css selector", "form.roll button").is_displayed()
    browser.set_window_size(1280, 900)

    # Enable it again; revoke the old secret test key; roll the secret production key now.
    page.act(pk_production, "enable")
    assert page.rows()[pk_production]["status"] == "active"
    page.act(sk_test, "revoke")
    rows = page.rows()
    assert rows[sk_test]["status"] == "revoked" and rows[sk_test]["state"].startswith("revoked at")
    sk_production = by_label(shown, "Secret production key")
    page.roll(sk_production, "now")
    ((new_sk_production, (label, _)),) = page.new_keys().items()
    assert label == "Secret production key"
    rows = page.rows()
    assert rows[sk_production]["status"] == "expired"

    # What the page shows is what the CLI lists.
    stored = cli_keys(ctl, account)
    assert {k: r["status"] for k, r in rows.items()} == {k: v["status"] for k, v in stored.items()}
    assert {k: r["hint"] for k, r in rows.items()} == {k: v["hint"] for k, v in stored.items()}

    # The same actions through the CLI leave the same state.
    created = ctl.cli("account", "create", "--name", "Acme via CLI")
    cli_account = created["account"]["id"]
    kinds = {(k["type"], k["environment"]): k["key_id"] for k in created["keys"]}
    ctl.cli("key", "roll", kinds[("secret", "test")], "--expires-in", "24h")
    for action in ("disable", "enable"):
        ctl.cli("key", action, kinds[("publishable", "production")])
    ctl.cli("key", "revoke", kinds[("secret", "test")])
    ctl.cli("key", "roll", kinds[("secret", "production")])
    assert shape(cli_keys(ctl, cli_account).values()) == shape(stored.values())

    # Sign out: the cookie goes, the session ends on the server, pages lead to sign-in.
    session = browser.get_cookie("keygate_session")["value"]
    assert fetch(f"{ctl.base}/ui/accounts", f"keygate_session={session}")[0] == 200
    page.sign_out()
    assert page.path == "/ui/login" and "You are signed out." in page.notices()
    assert browser.get_cookie("keygate_session") is None
    page.open(f"/ui/accounts/{account}")
    assert page.path == "/ui/login"
    assert fetch(f"{ctl.base}/ui/accounts/{account}", f"keygate_session={session}") == (
        303, "/ui/login?m=expired")
    print(f"\nbrowser test: {time.monotonic() - started:.1f} s; screenshot {SCREENSHOT}")


def test_a_key_rolled_on_the_page_is_refused_by_envoy(ctl, browser, upstream):
    """The issue's `done`: sign in, roll a key, and Envoy refuses its old value."""
    import httpx

    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: ctl.port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": 200, "timeout_ms": 500})
    if getattr(ctl, "sync_token", None):  # a keygatectl whose key map needs its sync token
        service["bearer_token"] = ctl.sync_token
    harness.set_service_config(config, service)
    envoy = harness.Envoy(config, concurrency=2)
    envoy.start()
    try:
        api = f"http://127.0.0.1:{ports[10000]}/v3/devices"

        def answer(key):
            r = httpx.get(api, headers={"authorization": f"token {key}", "connection": "close"}, timeout=5)
            return r.status_code, (r.json().get("error", {}).get("code") if r.status_code != 200 else None)

        page = KeysPage(browser, ctl.base)
        page.open("/ui/")
        assert page.path == "/ui/login"
        page.sign_in(ctl.token)
        page.create_account("Envoy check")
        shown = page.new_keys()
        key_id = by_label(shown, "Secret test key")
        old = shown[key_id][1]
        wait_for(lambda: answer(old) == (200, None))

        page.roll(key_id, "now")
        ((_, (_, new)),) = page.new_keys().items()
        wait_for(lambda: answer(old) == (401, "invalid_api_key"))
        wait_for(lambda: answer(new) == (200, None))
    finally:
        envoy.stop()
