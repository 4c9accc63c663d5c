"""keygatectl's customer mail through a real SMTP server on loopback (aiosmtpd): a sign-up
over plain HTTP forms gets its link by mail, and the link creates the account; with
`?tls=required` keygatectl never sends a mail in the clear, nor over TLS it cannot verify.
(The whole journey in a browser, with Envoy, is tests/browser/test_customer_journey.py.)"""

import http.cookiejar
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import harness
import smtp
from ctl import CTL, Keygatectl

pytestmark = pytest.mark.skipif(harness.NATIVE_MODE, reason="keygatectl only: no filter involved")

PASSWORD = "plum-tractor-velvet-42-orbit"


class Forms:
    """A cookie-keeping client that sends forms as a browser does, without redirects."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(NoRedirect(), urllib.request.HTTPCookieProcessor(self.jar))

    def send(self, path, form=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data)
        try:
            with self.opener.open(request, timeout=30) as r:
                return r.status, r.headers.get("location"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("location"), e.read().decode()

    def fill(self, page, action, fields):
        status, _, body = self.send(page)
        assert status == 200, body
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)
        return self.send(action, {"csrf": csrf, **fields})


@pytest.fixture
def mail():
    server = smtp.SmtpServer().start()
    yield server
    server.stop()


def serve(*args):
    ctl = Keygatectl().start(extra_args=list(args))
    ctl.base = f"http://127.0.0.1:{ctl.port}"
    return ctl


def test_a_sign_up_link_arrives_by_smtp_and_creates_the_account(mail):
    ctl = serve("--smtp-url", mail.url, "--mail-from", "Example API <no-reply@example.com>",
                "--public-url", "http://127.0.0.1:1")  # links point where --public-url says
    try:
        forms = Forms(ctl.base)
        status, _, body = forms.fill("/signup", "/signup", {"email": "Ann@Example.com", "password": PASSWORD})
        assert status == 200 and "Check your inbox" in body
        message = mail.wait_for("ann@example.com", "Confirm your email")
        assert message["from"] == "Example API <no-reply@example.com>"
        assert message["to"] == "ann@example.com"
        link = smtp.link(message, "verify")
        assert link.startswith("http://127.0.0.1:1/verify?token=")
        path = link.removeprefix("http://127.0.0.1:1")
        token = path.split("=", 1)[1]
        status, location, _ = forms.fill(path, "/verify", {"token": token, "password": PASSWORD})
        assert (status, location) == (303, "/settings/account")
        accounts = ctl.cli("account", "list")["accounts"]
        assert len(accounts) == 1
        status, _, page = forms.send("/settings/account")
        assert status == 200 and accounts[0]["id"] in page and "Your new keys" in page
        # The log names the mail and a masked address, never the link.
        log = ctl.read_log()
        assert 'mail "Confirm your email to get your API keys" to a…@example.com sent' in log
        assert token not in log and "ann@example.com" not in log
    finally:
        ctl.stop()


def test_tls_required_never_sends_in_the_clear_or_to_an_unverified_server(mail, tmp_path):
    # A server without STARTTLS: with ?tls=required nothing is sent.
    ctl = serve("--smtp-url", mail.url + "?tls=required")
    try:
        status, _, body = Forms(ctl.base).fill("/signup", "/signup", {"email": "bob@example.com", "password": PASSWORD})
        assert status == 200 and "Check your inbox" in body  # the page says the same either way
        deadline = time.monotonic() + 15
        while "not sent" not in ctl.read_log():
            assert time.monotonic() < deadline, ctl.read_log()
            time.sleep(0.05)
        assert mail.received("bob@example.com") == []
        assert "STARTTLS is not supported" in ctl.read_log()
    finally:
        ctl.stop()

    # A server offering STARTTLS with a certificate nobody vouches for: refused too.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls_server = smtp.SmtpServer(tls_context=context).start()
    ctl = serve("--smtp-url", tls_server.url + "?tls=required")
    try:
        Forms(ctl.base).fill("/signup", "/signup", {"email": "carol@example.com", "password": PASSWORD})
        deadline = time.monotonic() + 15
        while "not sent" not in ctl.read_log():
            assert time.monotonic() < deadline, ctl.read_log()
            time.sleep(0.05)
        assert tls_server.received("carol@example.com") == []
        assert "invalid peer certificate" in ctl.read_log()
    finally:
        ctl.stop()
        tls_server.stop()


def private_ca(tmp_path):
    """A CA and a server certificate it signs for 127.0.0.1 (as a company's mail relay has)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem")
    return tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"


def test_a_relay_with_a_private_ca_gets_the_mail_over_starttls(tmp_path):
    ca, cert, key = private_ca(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # The server takes mail only after STARTTLS: a mail received went over TLS.
    server = smtp.SmtpServer(tls_context=context).start()
    ctl = serve("--smtp-url", server.url + "?tls=required", "--smtp-ca-file", str(ca))
    try:
        status, _, body = Forms(ctl.base).fill("/signup", "/signup",
                                               {"email": "dana@example.com", "password": PASSWORD})
        assert status == 200 and "Check your inbox" in body
        message = server.wait_for("dana@example.com", "")
        assert smtp.link(message, "verify")
    finally:
        ctl.stop()
        server.stop()


def test_a_bad_ca_file_is_refused_at_start_naming_the_flag(tmp_path, mail):
    (tmp_path / "ca.pem").write_text("not a certificate")
    out = subprocess.run([str(CTL), "--database", str(tmp_path / "k.db"), "serve",
                          "--smtp-url", mail.url + "?tls=required",
                          "--smtp-ca-file", str(tmp_path / "ca.pem")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--smtp-ca-file" in out.stderr and "no PEM certificate" in out.stderr, out.stderr
