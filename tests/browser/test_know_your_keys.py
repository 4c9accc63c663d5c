"""Know your keys, in a real headless Chromium: names and expiries set on the pages, the last
use and the 30-day chart drawn from usage reports (sent to `POST /v1/usage` as the Envoys
send them), an old key flagged safe to revoke early, the operator's audit trail naming who
did what from where, and a customer's Settings → Account with the same (rename, stop an old
key, recent activity)."""

import json
import os
import re
import sqlite3
import time
import urllib.request

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("KEYGATE_BROWSER") != "1",
                                reason="browser tests: run `bash tests/browser/run.sh`")
pytest.importorskip("selenium", reason="browser tests: run `bash tests/browser/run.sh`")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from ctl import Keygatectl  # noqa: E402
from test_customer_journey import mail, sign_up_and_confirm  # noqa: E402,F401
from test_keys_page import browser, chrome, page_audit  # noqa: E402,F401
from ui import CustomerPages, KeysPage  # noqa: E402

REPORTS = iter(range(1, 1_000_000))


@pytest.fixture
def ctl(request):
    extra = []
    if "mail" in request.fixturenames:
        server = request.getfixturevalue("mail")
        extra = ["--smtp-url", server.url, "--mail-from", "keygate <keys@example.com>"]
    ctl = Keygatectl().start(extra_args=extra)
    ctl.base = f"http://127.0.0.1:{ctl.port}"
    yield ctl
    ctl.stop()  # also searches its log and database for every plaintext key seen


def report_usage(ctl, entries):
    """Sends a usage report as a fetcher does: [(key_id, allowed, refused, seconds ago)]."""
    now = int(time.time())
    body = {"report_id": f"browser-test-report-{next(REPORTS):06d}",
            "keys": [{"key_id": k, "allowed": a, "refused": r, "last_used": now - ago}
                     for k, a, r, ago in entries]}
    request = urllib.request.Request(
        f"{ctl.base}/v1/usage", data=json.dumps(body).encode(), method="POST",
        headers={"authorization": f"Bearer {ctl.sync_token}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 204


def backdate(ctl, key_id, seconds):
    """Moves a key's roll and its last use `seconds` into the past, as if its grace had begun
    that long ago (the page's "safe to revoke" needs reports to have kept coming for two
    minutes after a roll)."""
    with sqlite3.connect(ctl.db, timeout=10) as db:
        db.execute("UPDATE keys SET rolled_at = rolled_at - ? WHERE id = ?", (seconds, key_id))
        db.execute("UPDATE key_last_used SET last_used_at = last_used_at - ? WHERE key_id = ?",
                   (seconds, key_id))
    db.close()


def row(page, key_id):
    return page.find(f"tr[data-key-id='{key_id}']")


def cell(page, key_id, label):
    return row(page, key_id).find_element(By.CSS_SELECTOR, f"[data-label='{label}']")


def chart_titles(page, key_id):
    """The day titles of a key's chart that have a bar."""
    chart = cell(page, key_id, "Use").find_element(By.CSS_SELECTOR, "svg.usage-chart")
    return [g.find_element(By.TAG_NAME, "title").get_attribute("textContent")
            for g in chart.find_elements(By.CSS_SELECTOR, "g")
            if g.find_elements(By.TAG_NAME, "rect")]


def test_operator_names_expiries_last_used_chart_safe_to_revoke_and_audit(ctl, browser):
    page = KeysPage(browser, ctl.base)
    page.sign_in(ctl.token)
    account = page.create_account("Initech")
    page.new_keys()

    # A new key with a name and an expiry from the list: shown once, named, expiring.
    page.find("#new-name").send_keys("iOS app 2.3")
    Select(page.find("#new-expires-in")).select_by_visible_text("in 30 days")
    before = int(time.time())
    page.submit(page.find("form[action$='/keys'] button[type=submit]"))
    shown = page.new_keys()
    assert len(shown) == 1
    (ios,) = shown
    assert any("Added a secret test key. It expires at" in n for n in page.notices()), page.notices()
    assert cell(page, ios, "Key").text.endswith("iOS app 2.3")
    assert "expiring at" in cell(page, ios, "State").text
    listed = {k["key_id"]: k for k in ctl.cli("key", "list", "--account", account)["keys"]}
    assert listed[ios]["name"] == "iOS app 2.3"
    assert before + 30 * 86400 <= listed[ios]["expires_at"] <= int(time.time()) + 30 * 86400

    # A publishable production key expiring at a time typed in UTC.
    Select(page.find("#new-type")).select_by_value("publishable")
    Select(page.find("#new-environment")).select_by_value("production")
    # The UTC time field, as the date picker fills it.
    browser.execute_script("arguments[0].value = '2031-01-01T09:30'", page.find("#new-expires-at"))
    page.submit(page.find("form[action$='/keys'] button[type=submit]"))
    (web,) = page.new_keys()
    assert ctl.cli("key", "list", "--account", account)["keys"][-1]["expires_at"] == 1925026200

    # Rename: on the page and in the CLI; never in the key map.
    field = row(page, web).find_element(By.CSS_SELECTOR, "form.rename input[name=name]")
    field.clear()
    field.send_keys("web checkout")
    page.submit(row(page, web).find_element(By.CSS_SELECTOR, "form.rename button"))
    assert any("is now named “web checkout”" in n for n in page.notices()), page.notices()
    assert cell(page, web, "Key").text.endswith("web checkout")
    _, _, key_map = ctl.key_map()
    assert b"web checkout" not in key_map and b"iOS app" not in key_map

    # Last used and the chart, from the Envoys' reports.
    assert cell(page, ios, "Use").text.startswith("never used")
    report_usage(ctl, [(ios, 40, 2, 185), (web, 5, 0, 0)])
    report_usage(ctl, [(ios, 2, 1, 300)])
    page.open(f"/ui/accounts/{account}")
    use = cell(page, ios, "Use").text
    # Minute precision: 185 s ago reads as 3 or 4 min.
    assert re.match(r"last used [34] min ago", use), use
    assert "Requests in the last 30 days: 42 allowed, 3 refused" in use
    titles = chart_titles(page, ios)
    assert len(titles) == 1 and titles[0].endswith(": 42 allowed, 3 refused"), titles
    assert re.match(r"last used (just now|1 min ago)", cell(page, web, "Use").text)
    assert page_audit(browser)["inline"] == 0, "the chart uses no style attribute"

    # Roll the iOS key with a 24-hour grace: once its grace is some minutes old and reports
    # kept coming without it, the old key is safe to revoke early.
    roll = row(page, ios).find_element(By.CSS_SELECTOR, "form.roll")
    Select(roll.find_element(By.TAG_NAME, "select")).select_by_value("86400")
    page.submit(roll.find_element(By.TAG_NAME, "button"))
    page.new_keys()
    assert not row(page, ios).find_elements(By.CSS_SELECTOR, "[data-safe-to-revoke]"), \
        "no report since the roll yet"
    backdate(ctl, ios, 600)
    report_usage(ctl, [(web, 1, 0, 0)])
    page.open(f"/ui/accounts/{account}")
    note = cell(page, ios, "State").find_element(By.CSS_SELECTOR, "[data-safe-to-revoke]")
    assert "safe to revoke now" in note.text
    # Used again meanwhile: no longer safe.
    report_usage(ctl, [(ios, 1, 0, 0)])
    page.open(f"/ui/accounts/{account}")
    assert not row(page, ios).find_elements(By.CSS_SELECTOR, "[data-safe-to-revoke]")

    # The audit trail: every change above, by this operator's session, from 127.0.0.1.
    page.open("/ui/audit")
    rows = page.find_all("table.audit tbody tr")
    actions = [r.get_attribute("data-action") for r in rows]
    assert actions[:5] == ["key.rolled", "key.renamed", "key.created", "key.created",
                           "account.created"], actions
    for r in rows[:5]:
        who = r.find_element(By.CSS_SELECTOR, "[data-label='Who']").text
        assert who.startswith("operator (session "), who
        assert r.find_element(By.CSS_SELECTOR, "[data-label='From']").text == "127.0.0.1"
    assert "web checkout" in rows[1].text
    assert "admin_token.set" in actions and "sync_token.set" in actions
    page.open(f"/ui/audit?account={account}")
    assert all(r.find_element(By.CSS_SELECTOR, "[data-label='Account']").text == account
               for r in page.find_all("table.audit tbody tr"))
    audit = page_audit(browser)
    assert (audit["unlabeled"], audit["nameless"], audit["external"], audit["inline"]) == \
        ([], [], [], 0), audit


def test_a_customer_names_keys_sees_their_use_stops_an_old_key_and_reads_the_activity(
        ctl, mail, browser):
    page = CustomerPages(browser, ctl.base)
    sign_up_and_confirm(page, mail, "kim@example.com")
    page.new_keys()
    rows = page.key_rows()
    (sk_test,) = [k for k, r in rows.items() if r["label"].startswith("Secret") and "Test" in r["env"]]

    # Name it.
    form = row(page, sk_test).find_element(By.CSS_SELECTOR, "form.rename")
    form.find_element(By.CSS_SELECTOR, "input[name=name]").send_keys("billing backend")
    page.submit(form.find_element(By.TAG_NAME, "button"))
    assert any("is now named “billing backend”" in n for n in page.notices()), page.notices()
    assert cell(page, sk_test, "Key").text.endswith("billing backend")

    # Its use, as the Envoys report it.
    report_usage(ctl, [(sk_test, 7, 1, 400)])
    page.open("/settings/account")
    use = cell(page, sk_test, "Use").text
    assert re.match(r"last used [67] min ago", use), use
    assert "7 allowed, 1 refused" in use

    # Roll with a 24-hour grace; the old key, unused since, says so and can be stopped.
    roll = row(page, sk_test).find_element(By.CSS_SELECTOR, "form.roll")
    Select(roll.find_element(By.TAG_NAME, "select")).select_by_value("86400")
    page.submit(roll.find_element(By.TAG_NAME, "button"))
    page.new_keys()
    backdate(ctl, sk_test, 600)
    report_usage(ctl, [])
    page.open("/settings/account")
    assert "safe to revoke now" in cell(page, sk_test, "State").text
    page.submit(row(page, sk_test).find_element(By.CSS_SELECTOR, "form[action$='/revoke'] button"),
                confirm="Stop the old")
    assert any("stopped working" in n for n in page.notices()), page.notices()
    assert sk_test not in page.key_rows()
    assert {k["key_id"]: k for k in ctl.cli("key", "list")["keys"]}[sk_test]["status"] == "revoked"

    # Recent activity: the customer's own changes, by "you", from their address.
    activity = page.find_all("table.audit tbody tr")
    seen = [(r.find_element(By.CSS_SELECTOR, "[data-label='What']").text,
             r.find_element(By.CSS_SELECTOR, "[data-label='Who']").text,
             r.find_element(By.CSS_SELECTOR, "[data-label='From']").text) for r in activity]
    assert seen[:3] == [("Key revoked", "you", "127.0.0.1"), ("Key rolled", "you", "127.0.0.1"),
                        ("Key renamed", "you", "127.0.0.1")], seen
    assert ("Signed in", "you", "127.0.0.1") in seen
    assert seen[-1][0] == "Signed up: the account and its keys were created"
    # The operator's trail has the same, as the customer's.
    events = ctl.cli("audit")["events"]
    revoked = [e for e in events if e["action"] == "key.revoked"]
    assert revoked and revoked[0]["actor"]["kind"] == "customer"
    audit = page_audit(browser)
    assert (audit["unlabeled"], audit["nameless"], audit["external"], audit["inline"]) == \
        ([], [], [], 0), audit


def test_operator_sets_changes_and_removes_a_keys_rate_limit(ctl, browser):
    """The operator page's rate-limit form (issue 23): set, refused with the field named,
    removed; each kept in keygatectl (what the key map ships) and audited."""
    page = KeysPage(browser, ctl.base)
    page.sign_in(ctl.token)
    account = page.create_account("Hooli")
    page.new_keys()
    listed = ctl.cli("key", "list", "--account", account)["keys"]
    key_id = next(k["key_id"] for k in listed if k["type"] == "secret" and k["environment"] == "test")

    def form():
        return page.row(key_id).find_element(By.CSS_SELECTOR, "form.ratelimit")

    def fill(requests, per, burst):
        f = form()
        for name, value in (("rate_requests", requests), ("rate_burst", burst)):
            field = f.find_element(By.CSS_SELECTOR, f"input[name={name}]")
            field.clear()
            field.send_keys(value)
        Select(f.find_element(By.CSS_SELECTOR, "select[name=rate_per]")).select_by_value(per)
        page.submit(f.find_element(By.CSS_SELECTOR, "button[type=submit]"))

    def stored():
        return next(k for k in ctl.cli("key", "list", "--account", account)["keys"]
                    if k["key_id"] == key_id)["rate_limit"]

    assert "No rate limit" in form().text
    fill("10", "second", "20")
    assert any("is limited to 10 per second, burst 20" in n for n in page.notices()), page.notices()
    assert "Rate limit: 10 per second, burst 20" in form().text
    assert stored() == {"requests": 10, "per": "second", "burst": 20}
    # The form shows the limit it has, ready to change.
    assert form().find_element(By.CSS_SELECTOR, "input[name=rate_requests]").get_attribute("value") == "10"

    # A value the browser would stop (min=1) sent anyway: keygatectl names the field.
    browser.execute_script("arguments[0].removeAttribute('min')",
                           form().find_element(By.CSS_SELECTOR, "input[name=rate_burst]"))
    fill("10", "minute", "0")
    assert any("rate_limit.burst" in n for n in page.notices()), page.notices()
    assert stored() == {"requests": 10, "per": "second", "burst": 20}, "nothing changed"

    fill("", "second", "")
    assert any("has no rate limit now" in n for n in page.notices()), page.notices()
    assert stored() is None
    events = [e for e in ctl.cli("audit", "--account", account)["events"]
              if e["action"] == "key.rate_limit_set"]
    assert [e["actor"]["kind"] for e in events] == ["operator", "operator"]
    audit = page_audit(browser)
    assert audit["unlabeled"] == [] and audit["nameless"] == [], audit
