// Compare page: the "only differences" toggle hides diff rows whose values are all equal.
const toggle = document.getElementById("only-diff");
const table = document.getElementById("diff");
if (toggle && table) {
  const apply = () => table.classList.toggle("only-diff", toggle.checked);
  toggle.addEventListener("change", apply);
  apply();
}
