// Runs table: enable "Compare selected" when 2–10 runs are ticked.
const form = document.getElementById("compare-form");
if (form) {
  const min = Number(form.dataset.min || 2);
  const max = Number(form.dataset.max || 10);
  const button = document.getElementById("compare-button");
  const hint = document.getElementById("compare-hint");
  const update = () => {
    const n = form.querySelectorAll('input[name="run"]:checked').length;
    button.disabled = n < min || n > max;
    button.textContent = n ? `Compare ${n} selected` : "Compare selected";
    hint.textContent = n > max ? `at most ${max} runs` : (n < min ? `tick ${min}–${max} runs` : "");
  };
  form.addEventListener("change", update);
  update();
}
