// Forms with data-confirm="question" ask before they submit. A module instead of inline onsubmit handlers:
// the Content-Security-Policy allows no inline script (backend/headers.py).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
}, true);
