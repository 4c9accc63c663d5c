// keygate's pages: copy buttons, confirmations, no double submits. The page works
// without it (keys can be selected and copied by hand; forms post without confirming).
"use strict";

function copyText(code, status) {
  const text = code.textContent;
  const done = (ok) => {
    if (status) status.textContent = ok ? "Copied" : "Select the key and copy it";
  };
  const fallback = () => {
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    done(ok);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(() => done(true), fallback);
  } else {
    fallback();
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const code = document.getElementById(button.dataset.copy);
  if (code) copyText(code, document.getElementById(button.dataset.status));
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.sent) {
    event.preventDefault();
    return;
  }
  let question = form.dataset.confirm;
  const grace = form.elements.namedItem("grace");
  if (form.dataset.confirmNow && grace && grace.value === "0") {
    question = form.dataset.confirmNow;
  }
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  if (form.method.toLowerCase() === "post") form.dataset.sent = "1";
});

// Coming back to a page from the history shows the server's copy, never a stale one.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});
