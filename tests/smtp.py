"""A real SMTP server on loopback (aiosmtpd) that keeps every message it receives, for tests
of the mail keygatectl sends: sign-up links, password resets, notices."""

import email
import email.policy
import re
import threading
import time

from aiosmtpd.controller import Controller

import harness


class _Inbox:
    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []  # (envelope recipients, parsed message)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpServer:
    """`start()` listens on a free loopback port; `url` is what `--smtp-url` takes."""

    def __init__(self, tls_context=None):
        """`tls_context`: offer STARTTLS with it (and require it before mail is taken)."""
        self.inbox = _Inbox()
        self.port = harness.free_port()
        extra = {"tls_context": tls_context, "require_starttls": True} if tls_context else {}
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **extra)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def received(self, to):
        with self.inbox.lock:
            return [m for rcpts, m in self.inbox.messages if to in rcpts]

    def wait_for(self, to, subject, timeout=15.0, after=0):
        """The first message to `to` whose subject contains `subject`, past the first `after`
        messages to that address; waits for it with a deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.received(to)[after:]:
                if subject in message["subject"]:
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no mail {subject!r} to {to} within {timeout} s")


def body(message):
    return message.get_body(preferencelist=("plain",)).get_content()


def link(message, path):
    """The `http…/{path}?token=…` link in a message's text."""
    match = re.search(r"https?://\S+/" + re.escape(path) + r"\?token=[0-9a-f]{64}", body(message))
    assert match, body(message)
    return match.group(0)
