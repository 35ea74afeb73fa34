// keyward console: small progressive enhancements only (the console works
// without script). Loaded from /ui/assets/console.js; CSP forbids inline script.
"use strict";
document.addEventListener("click", (ev) => {
  const btn = ev.target.closest("button[data-copy]");
  if (!btn) return;
  const field = document.getElementById(btn.dataset.copy);
  if (!field) return;
  field.select();
  if (navigator.clipboard) {
    navigator.clipboard.writeText(field.value).then(
      () => { btn.textContent = "Copied"; },
      () => { btn.textContent = "Select and copy"; }
    );
  }
});
// Never keep a value typed into a password field across a back/forward restore.
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted) {
    for (const f of document.querySelectorAll('input[type="password"]')) f.value = "";
  }
});
