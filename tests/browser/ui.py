"""Drives keygatectl's operator page the way a person does: reads what is on screen, fills
in forms, clicks buttons, answers confirmation dialogs."""

import secrets
import time
from urllib.parse import urlparse

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

import keys


def wait_for(predicate, timeout=8.0, interval=0.05):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError("condition not met in time")


class KeysPage:
    def __init__(self, driver, base):
        self.d = driver
        self.base = base.rstrip("/")

    # -- navigation -----------------------------------------------------------------------

    def open(self, path):
        self.d.get(self.base + path)
        return self

    @property
    def path(self):
        return urlparse(self.d.current_url).path

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def text(self, css="main"):
        return self.find(css).text

    def submit(self, button, confirm=None):
        """Clicks a submit button and waits for the next page. `confirm`: the dialog that
        must come up first (a part of its text), accepted."""
        # The old document is marked; the next one, fully loaded, is not.
        marker = secrets.token_hex(8)
        self.d.execute_script("document.documentElement.dataset.kgPage = arguments[0]", marker)
        button.click()
        if confirm is not None:
            alert = WebDriverWait(self.d, 5).until(EC.alert_is_present())
            assert confirm in alert.text, alert.text
            alert.accept()

        def next_page(d):
            try:
                return d.execute_script(
                    "return document.readyState === 'complete' && "
                    "document.documentElement.dataset.kgPage !== arguments[0]", marker)
            except WebDriverException:  # mid-navigation
                return False

        WebDriverWait(self.d, 40).until(next_page)

    def notices(self):
        return [e.text for e in self.find_all(".notice")]

    # -- sign-in ----------------------------------------------------------------------------

    def sign_in(self, token):
        """Fills in and sends the sign-in form; returns how long the answer took."""
        if self.path != "/ui/login":
            self.open("/ui/login")
        field = self.find("#token")
        field.clear()
        field.send_keys(token)
        start = time.monotonic()
        self.submit(self.find("main form button[type=submit]"))
        return time.monotonic() - start

    def sign_out(self):
        self.submit(self.find("header form[action='/ui/logout'] button"))

    # -- accounts ---------------------------------------------------------------------------

    def create_account(self, name):
        """Creates an account on the accounts page; returns its id (from the page's URL)."""
        self.open("/ui/accounts")
        self.find("#name").send_keys(name)
        self.submit(self.find("form[method=post][action='/ui/accounts'] button[type=submit]"))
        assert self.path.startswith("/ui/accounts/acct_"), self.path
        return self.path.rsplit("/", 1)[1]

    def search(self, query):
        self.open("/ui/accounts")
        field = self.find("#q")
        field.clear()
        field.send_keys(query)
        self.submit(self.find("form[role=search] button"))
        return [a.text for a in self.find_all("table.accounts tbody th a")]

    # -- keys -------------------------------------------------------------------------------

    def new_keys(self):
        """The keys shown once on this page: {key_id: (label, plaintext)}, remembered for the
        secret scan of keygatectl's log and database."""
        shown = {}
        for box in self.find_all(".reveal .newkey"):
            plaintext = box.find_element(By.CSS_SELECTOR, "code.secret").text
            label = box.find_element(By.CSS_SELECTOR, ".newkey-label").text
            shown[box.get_attribute("data-key-id")] = (label, keys.remember(plaintext))
        return shown

    def rows(self):
        """Every key row on the account page: {key_id: {status, hint, state, label}}."""
        # The history is folded away; open it so its rows read as shown.
        for details in self.find_all("details"):
            if not details.get_attribute("open"):
                details.find_element(By.TAG_NAME, "summary").click()
        rows = {}
        for row in self.find_all("tr[data-key-id]"):
            rows[row.get_attribute("data-key-id")] = {
                "status": row.get_attribute("data-status"),
                "hint": row.find_element(By.CSS_SELECTOR, "code.hint").text,
                "state": row.find_element(By.CSS_SELECTOR, ".state").text,
                "label": row.find_element(By.TAG_NAME, "th").text,
            }
        return rows

    def row(self, key_id):
        return self.find(f"tr[data-key-id='{key_id}']")

    def roll(self, key_id, grace_label):
        """Rolls a key with the grace period chosen by its label (now, in 1 hour, …)."""
        row = self.row(key_id)
        Select(row.find_element(By.CSS_SELECTOR, "select[name=grace]")).select_by_visible_text(grace_label)
        button = row.find_element(By.CSS_SELECTOR, "form.roll button")
        self.submit(button, confirm="stops working at once" if grace_label == "now" else None)

    def act(self, key_id, action):
        """revoke, disable or enable a key with its button."""
        button = self.row(key_id).find_element(By.CSS_SELECTOR, f"form[action$='/{action}'] button")
        self.submit(button, confirm="for good" if action == "revoke" else None)


class CustomerPages(KeysPage):
    """The customer's pages: sign-up, the email link, sign-in, reset, Settings → Account."""

    def fill(self, fields, button="main form button[type=submit]"):
        """Types `fields` ({css id: text}) into the page's form and sends it."""
        for name, value in fields.items():
            field = self.find(f"#{name}")
            if not field.get_attribute("readonly"):
                field.clear()
                field.send_keys(value)
        self.submit(self.find(button))

    def sign_up(self, email, password):
        self.open("/signup")
        self.fill({"email": email, "password": password})

    def sign_in(self, email, password):
        self.open("/login")
        self.fill({"email": email, "password": password})

    def confirm(self, link, password):
        """Opens an emailed sign-up link and confirms it with the password."""
        self.d.get(link)
        self.fill({"password": password})

    def key_rows(self):
        """Settings → Account's keys: {key_id: {label, env, hint, status, state, rolled}}."""
        rows = {}
        for table in self.find_all("table.keys"):
            env = table.find_element(By.TAG_NAME, "caption").get_attribute("textContent")
            for row in table.find_elements(By.CSS_SELECTOR, "tr[data-key-id]"):
                cells = {td.get_attribute("data-label"): td for td in row.find_elements(By.TAG_NAME, "td")}
                rows[row.get_attribute("data-key-id")] = {
                    "label": row.find_element(By.TAG_NAME, "th").text,
                    "env": env,
                    "hint": row.find_element(By.CSS_SELECTOR, "code.hint").text,
                    "status": row.get_attribute("data-status"),
                    "state": row.find_element(By.CSS_SELECTOR, ".state").text,
                    "rolled": cells["Last rolled"].text,
                }
        return rows
