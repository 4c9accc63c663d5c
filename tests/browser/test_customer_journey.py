"""A customer's whole journey in a real headless Chromium, with real email (an SMTP server on
loopback receives what keygatectl sends) and a real Envoy polling the real keygatectl: sign up
→ the mail arrives → open its link → signed in on Settings → Account → take the secret test
key → 200 through Envoy → roll it → the old key gets 401 within a poll interval, the new one
200 → sign in again → reset the password by email → the old sessions are gone. Then every
refusal, each a clear answer that changes nothing. Screenshots of Settings → Account (desktop
and phone width) are saved (see SCREENSHOT)."""

import os
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("KEYGATE_BROWSER") != "1",
                                reason="browser tests: run `bash tests/browser/run.sh`")
pytest.importorskip("selenium", reason="browser tests: run `bash tests/browser/run.sh`")

import harness  # noqa: E402
import keys  # noqa: E402
import smtp  # noqa: E402
from ctl import Keygatectl  # noqa: E402
from test_keys_page import browser, chrome, page_audit, sha256  # noqa: E402,F401
from ui import CustomerPages, wait_for  # noqa: E402

PASSWORD = "plum-tractor-velvet-42-orbit"
NEW_PASSWORD = "granite-lantern-oboe-77-fjord"
# The fetcher's poll interval: a rolled key must be refused within about this long.
INTERVAL_MS = 500
SCREENSHOT = harness.ROOT / os.environ.get("KEYGATE_ACCOUNT_SCREENSHOT", "target/browser/account-page.png")
PHONE_SCREENSHOT = SCREENSHOT.with_name(SCREENSHOT.stem + "-phone.png")


@pytest.fixture
def mail():
    server = smtp.SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def ctl(mail):
    ctl = Keygatectl().start(extra_args=["--smtp-url", mail.url, "--mail-from", "keygate <keys@example.com>"])
    ctl.base = f"http://127.0.0.1:{ctl.port}"
    yield ctl
    ctl.stop()  # also searches its log and database for every plaintext key seen


@pytest.fixture
def envoy(ctl, upstream):
    config = harness.load_example("envoy-sync.yaml")
    ports = {9901: harness.free_port(), 10000: harness.free_port(),
             8081: upstream.server_address[1], 8080: ctl.port}
    config = harness.localize(config, ports)
    service = harness.service_config(config)
    service.update({"interval_ms": INTERVAL_MS, "timeout_ms": 500})
    if getattr(ctl, "sync_token", None):  # a keygatectl whose key map needs its sync token
        service["bearer_token"] = ctl.sync_token
    harness.set_service_config(config, service)
    proxy = harness.Envoy(config, concurrency=2)
    proxy.start()
    proxy.url = f"http://127.0.0.1:{ports[10000]}"
    yield proxy
    proxy.stop()


def through_envoy(envoy, key):
    r = httpx.get(envoy.url + "/v3/devices",
                  headers={"authorization": f"token {key}", "connection": "close"}, timeout=5)
    return r.status_code


def raw(ctl, method, path, cookie=None, form=None, jar=None):
    """A request outside the browser: (status, Location, headers, body). No redirects."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    handlers = [NoRedirect()]
    if jar is not None:
        handlers.append(urllib.request.HTTPCookieProcessor(jar))
    opener = urllib.request.build_opener(*handlers)
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    headers = {"cookie": cookie} if cookie else {}
    request = urllib.request.Request(ctl.base + path, data=data, method=method, headers=headers)
    try:
        with opener.open(request, timeout=40) as r:
            return r.status, r.headers.get("location"), r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("location"), e.headers, e.read().decode()


def csrf_of(body):
    return body.split('name="csrf" value="')[1].split('"')[0]


def cli_keys(ctl, account):
    return {k["key_id"]: k for k in ctl.cli("key", "list", "--account", account)["keys"]}


def test_sign_up_verify_take_a_key_roll_it_through_envoy_and_reset_the_password(ctl, mail, envoy, browser):
    started = time.monotonic()
    page = CustomerPages(browser, ctl.base)
    email = "ann.lee@example.com"

    # Signed out, the start page leads to sign-in, which links to sign-up.
    page.open("/")
    assert page.path == "/login"
    page.submit(page.find("a[href='/signup']"))
    assert page.path == "/signup"

    # Sign up: the page says to check the inbox; the mail arrives at the SMTP server.
    page.fill({"email": "Ann.Lee@Example.com", "password": PASSWORD})
    assert page.find("h1").text == "Check your inbox"
    assert email in page.text(".notice")
    message = mail.wait_for(email, "Confirm your email")
    assert message["from"] == "keygate <keys@example.com>"
    assert "24 hours" in smtp.body(message)
    link = smtp.link(message, "verify")
    assert link.startswith(ctl.base + "/verify?token=")

    # Open its link, confirm with the password: signed in, on Settings → Account, with the
    # account's four keys shown once.
    page.confirm(link, PASSWORD)
    assert page.path == "/settings/account"
    assert page.find("h1").text == "Settings"
    assert "Your email is confirmed" in page.notices()[0]
    shown = page.new_keys()
    assert sorted(label for label, _ in shown.values()) == sorted(
        ["Secret test key", "Publishable test key", "Secret production key", "Publishable production key"])
    assert "will not be shown again" in page.text(".reveal")
    cookie = browser.get_cookie("keygate_account_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert browser.execute_script("return document.cookie") == "", "scripts cannot read the session"
    account = page.text(".meta code")
    stored = cli_keys(ctl, account)
    for key_id, (_, plaintext) in shown.items():
        assert sha256(plaintext) == stored[key_id]["digest"], "the page shows the key the CLI lists"

    # Take the secret test key: 200 through Envoy.
    (sk_test,) = [k for k, (label, _) in shown.items() if label == "Secret test key"]
    secret = shown[sk_test][1]
    wait_for(lambda: through_envoy(envoy, secret) == 200, timeout=10)

    # Reloading shows the keys masked, with their times; the page says what rolling does.
    browser.refresh()
    assert not page.find_all(".reveal")
    for _, plaintext in shown.values():
        assert plaintext not in browser.page_source
    rows = page.key_rows()
    assert rows[sk_test]["hint"] == stored[sk_test]["hint"] and rows[sk_test]["hint"].endswith(secret[-4:])
    assert rows[sk_test]["status"] == "active" and rows[sk_test]["rolled"] == "never"
    assert "stops working at once" in page.text("#roll-help") and "401" in page.text("#roll-help")

    # Roll it now: the new key is shown once; the old one gets 401 through Envoy within a
    # poll interval (plus the time to answer), the new one 200.
    page.roll(sk_test, "now")
    rolled_at = time.monotonic()
    ((new_id, (label, new_secret)),) = page.new_keys().items()
    assert label == "Secret test key" and new_secret.startswith("sk_test_") and new_secret != secret
    assert any("stopped working" in n for n in page.notices())
    refused_at = wait_for(lambda: through_envoy(envoy, secret) == 401 and time.monotonic(),
                          timeout=INTERVAL_MS / 1000 + 2.0)
    wait_for(lambda: through_envoy(envoy, new_secret) == 200, timeout=INTERVAL_MS / 1000 + 2.0)
    print(f"\nold key refused by Envoy {1000 * (refused_at - rolled_at):.0f} ms after the roll's page loaded")
    rows = page.key_rows()
    assert sk_test not in rows, "the rolled key has left the page"
    assert rows[new_id]["status"] == "active" and rows[new_id]["rolled"] != "never"

    # Sign out, sign in again with the email and password: keys masked, never shown again.
    page.submit(page.find("header form[action='/logout'] button"))
    assert page.path == "/login" and "You are signed out." in page.notices()
    page.sign_in(email, PASSWORD)
    assert page.path == "/settings/account"
    assert not page.find_all(".reveal") and new_secret not in browser.page_source
    assert page.key_rows()[new_id]["hint"].endswith(new_secret[-4:])

    # The screenshot of Settings → Account, at desktop width, then a phone's (390 px).
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1200, max(700, height + 140))
    browser.refresh()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    audit = page_audit(browser)
    assert audit["unlabeled"] == [] and audit["nameless"] == [] and audit["external"] == []
    assert audit["inline"] == 0 and audit["lang"] == "en" and audit["overflow"] <= 0
    browser.set_window_size(390, 844)
    browser.refresh()
    assert page_audit(browser)["overflow"] <= 0, "nothing sticks out sideways on a phone"
    assert page.row(new_id).find_element("css selector", "form.roll button").is_displayed()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(390, max(844, height + 140))
    assert browser.save_screenshot(str(PHONE_SCREENSHOT))
    browser.set_window_size(1280, 900)

    # A second device signed in too.
    other_device = CookieJar()
    status, _, _, body = raw(ctl, "GET", "/login", jar=other_device)
    status, location, _, _ = raw(ctl, "POST", "/login", jar=other_device,
                                 form={"csrf": csrf_of(body), "email": email, "password": PASSWORD})
    assert (status, location) == (303, "/settings/account")
    assert raw(ctl, "GET", "/settings/account", jar=other_device)[0] == 200
    session = browser.get_cookie("keygate_account_session")["value"]

    # Reset the password by email: the link arrives, a new password is chosen, and every
    # session (this browser's and the other device's) is gone.
    page.open("/forgot")
    page.fill({"email": email})
    assert "If an account uses" in page.text(".notice")
    reset = mail.wait_for(email, "Reset your password")
    assert "1 hour" in smtp.body(reset)
    page.d.get(smtp.link(reset, "reset"))
    assert page.find("h1").text == "Choose a new password"
    page.fill({"password": NEW_PASSWORD})
    assert page.path == "/login" and "every session was signed out" in page.notices()[0]
    assert raw(ctl, "GET", "/settings/account", cookie=f"keygate_account_session={session}")[:2] == (
        303, "/login?m=expired")
    assert raw(ctl, "GET", "/settings/account", jar=other_device)[:2] == (303, "/login?m=expired")
    mail.wait_for(email, "Your password was changed")
    # The old password no longer works; the new one does. The link is spent.
    page.sign_in(email, PASSWORD)
    assert page.path == "/login" and "Wrong email or password" in page.notices()[0]
    page.sign_in(email, NEW_PASSWORD)
    assert page.path == "/settings/account"
    page.d.get(smtp.link(reset, "reset"))
    assert page.find("h1").text == "Link already used"
    print(f"customer journey: {time.monotonic() - started:.1f} s; screenshots {SCREENSHOT}, {PHONE_SCREENSHOT}")


def sign_up_and_confirm(page, mail, email, password=PASSWORD):
    page.sign_up(email, password)
    page.confirm(smtp.link(mail.wait_for(email, "Confirm your email"), "verify"), password)
    assert page.path == "/settings/account", page.text()
    return page.text(".meta code")


def test_every_refusal_is_a_clear_answer_and_changes_nothing(ctl, mail, browser):
    page = CustomerPages(browser, ctl.base)

    # Malformed and over-long input (the browser's own checks taken off, as a script would).
    page.open("/signup")
    browser.execute_script("document.querySelector('main form').noValidate = true;"
                           "document.getElementById('email').removeAttribute('maxlength');")
    for email, password, message in [
        ("not-an-address", PASSWORD, "does not look like an email address"),
        ("a" * 300 + "@example.com", PASSWORD, "email address is too long"),
        ("bob@example.com", "x" * 300, "password is too long"),
        ("bob@example.com", "password123", "too easy to guess"),
        ("bob@example.com", "Sh0rt!", "too short"),
    ]:
        page.fill({"email": email, "password": password})
        (notice,) = page.notices()
        assert message in notice and "Nothing was saved" in notice, notice
        browser.execute_script("document.querySelector('main form').noValidate = true;"
                               "document.getElementById('email').removeAttribute('maxlength');")
    assert mail.received("bob@example.com") == []

    # Ann and Bob each have an account.
    ann = sign_up_and_confirm(page, mail, "ann@example.com")
    page.submit(page.find("header form[action='/logout'] button"))
    bob = sign_up_and_confirm(page, mail, "bob@example.com")
    bob_keys = cli_keys(ctl, bob)
    page.submit(page.find("header form[action='/logout'] button"))

    # A sign-up with Ann's address answers as any sign-up does, and mails Ann instead.
    page.sign_up("ann@example.com", NEW_PASSWORD)
    assert page.find("h1").text == "Check your inbox"
    notice = mail.wait_for("ann@example.com", "You already have an account")
    assert "Nothing was changed" in smtp.body(notice)
    assert len(ctl.cli("account", "list")["accounts"]) == 2

    # Links: used, malformed, unknown, expired.
    first = smtp.link(mail.wait_for("ann@example.com", "Confirm your email"), "verify")
    browser.get(first)
    assert page.find("h1").text == "Link already used"
    browser.get(ctl.base + "/verify?token=1234")
    assert page.find("h1").text == "Link not valid" and "malformed" in page.text(".notice")
    browser.get(ctl.base + "/verify?token=" + "0" * 64)
    assert page.find("h1").text == "Link not valid"
    page.sign_up("carol@example.com", PASSWORD)
    late = smtp.link(mail.wait_for("carol@example.com", "Confirm your email"), "verify")
    with sqlite3.connect(ctl.db, timeout=10) as db:  # a day goes by
        db.execute("UPDATE signups SET expires_at = created_at - 1 WHERE email = ?", ("carol@example.com",))
    browser.get(late)
    assert page.find("h1").text == "Link expired"
    assert "carol" not in str(ctl.cli("account", "list"))

    # Wrong passwords: a clear, generic answer, each one slower than the last; an attempt
    # while a wait runs gets 429 with Retry-After, unchecked.
    page.sign_in("ann@example.com", "not-her-password-1")
    (notice,) = page.notices()
    assert "Wrong email or password" in notice and "this one waited 0.5 s" in notice
    page.sign_in("nobody@example.com", "not-her-password-1")
    assert "Wrong email or password" in page.notices()[0], "an unknown email reads the same"
    jar = CookieJar()
    body = raw(ctl, "GET", "/login", jar=jar)[3]
    probe = {"csrf": csrf_of(body), "email": "ann@example.com", "password": "x" * 300}
    slow = threading.Thread(target=page.sign_in, args=("ann@example.com", "not-her-password-2"))
    slow.start()
    try:
        def throttled():
            status, _, headers, text = raw(ctl, "POST", "/login", jar=jar, form=probe)
            assert status in (400, 429), status  # 400: "too long", before the wait began
            return status == 429 and (headers, text)
        headers, text = wait_for(throttled, timeout=30)
    finally:
        slow.join()
    assert 1 <= int(headers["retry-after"]) <= 30
    assert "Too many failed sign-ins" in text
    assert "this one waited" in page.notices()[0]

    # Signed in as Ann: a form without its CSRF token is refused, and changes nothing.
    wait_for(lambda: (page.sign_in("ann@example.com", PASSWORD), page.path)[1] == "/settings/account", timeout=40)
    ann_keys = cli_keys(ctl, ann)
    (sk_test,) = [k for k, v in ann_keys.items() if v["type"] == "secret" and v["environment"] == "test"]
    browser.execute_script("document.querySelector(`tr[data-key-id='${arguments[0]}'] input[name=csrf]`).remove()", sk_test)
    page.roll(sk_test, "in 1 hour")
    assert page.find("h1").text == "Form expired"
    assert "CSRF token is missing or wrong" in page.text(".notice") and "Nothing was changed" in page.text(".notice")
    assert cli_keys(ctl, ann) == ann_keys

    # Another account's key id in the form's URL: not found, and nothing changes.
    page.open("/settings/account")
    (bob_sk,) = [k for k, v in bob_keys.items() if v["type"] == "secret" and v["environment"] == "test"]
    browser.execute_script("document.querySelector(`tr[data-key-id='${arguments[0]}'] form.roll`)"
                           ".action = '/settings/account/keys/' + arguments[1] + '/roll'", sk_test, bob_sk)
    page.roll(sk_test, "in 1 hour")
    assert page.find("h1").text == "No such key"
    assert "no such key in your account" in page.text(".notice")
    assert cli_keys(ctl, bob) == bob_keys and cli_keys(ctl, ann) == ann_keys
    # An invented grace period.
    page.open("/settings/account")
    browser.execute_script("const o = document.querySelector(`tr[data-key-id='${arguments[0]}'] select option[value='3600']`);"
                           "o.value = '5';", sk_test)
    page.roll(sk_test, "in 1 hour")
    assert page.find("h1").text == "Choose when the old key stops"
    assert cli_keys(ctl, ann) == ann_keys

    # The operator disables Ann: her session ends and she cannot sign in; enabled, she can.
    session = browser.get_cookie("keygate_account_session")["value"]
    operator = CookieJar()
    body = raw(ctl, "GET", "/ui/login", jar=operator)[3]
    assert raw(ctl, "POST", "/ui/login", jar=operator, form={"csrf": csrf_of(body), "token": ctl.token})[0] == 303
    body = raw(ctl, "GET", f"/ui/accounts/{ann}", jar=operator)[3]
    assert "ann@example.com" in body and "can sign in" in body
    user_id = body.split('data-user-id="')[1].split('"')[0]
    assert raw(ctl, "POST", f"/ui/users/{user_id}/disable", jar=operator, form={"csrf": csrf_of(body)})[0] == 303
    assert raw(ctl, "GET", "/settings/account", cookie=f"keygate_account_session={session}")[1] == "/login?m=expired"
    page.sign_in("ann@example.com", PASSWORD)
    assert "disabled by the operator" in page.notices()[0]
    body = raw(ctl, "GET", f"/ui/accounts/{ann}", jar=operator)[3]
    assert raw(ctl, "POST", f"/ui/users/{user_id}/enable", jar=operator, form={"csrf": csrf_of(body)})[0] == 303
    assert raw(ctl, "POST", f"/ui/accounts/{ann}/disable", jar=operator, form={"csrf": csrf_of(body)})[0] == 303
    page.sign_in("ann@example.com", PASSWORD)
    assert "disabled by the operator" in page.notices()[0]
    assert raw(ctl, "POST", f"/ui/accounts/{ann}/enable", jar=operator, form={"csrf": csrf_of(body)})[0] == 303
    page.sign_in("ann@example.com", PASSWORD)
    assert page.path == "/settings/account"
    assert cli_keys(ctl, ann) == ann_keys, "disabling sign-in leaves the keys as they were"
