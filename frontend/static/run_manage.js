// Runs management on the run page (issue #20): the #run-edit form PATCHes name, tags and notes; Archive / Restore
// PATCHes `archived`; Delete asks first (window.confirm with the button's data-confirm text), then DELETEs the run
// and goes to its project. All through the REST API with the session's CSRF token; a refusal (a name already taken,
// 403 ...) is shown in #run-manage-feedback.
const form = document.getElementById("run-edit");

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function showError(text) {
  const box = document.getElementById("run-manage-feedback");
  box.textContent = text;
  box.hidden = false;
}

async function send(method, body) {
  const headers = { Accept: "application/json", "X-CSRF-Token": csrfToken() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`/api/v1/runs/${encodeURIComponent(form.dataset.run)}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.ok) return res.json();
  const answer = await res.json().catch(() => ({}));
  throw new Error(answer.detail || `HTTP ${res.status}`);
}

// Asked before a rename so that the usual clash is told without a refused request (the server still refuses one,
// with 409, should another run take the name in between).
async function nameTaken(name) {
  const params = new URLSearchParams({ project: form.dataset.project, q: name, archived: "all", limit: "500" });
  const res = await fetch(`/api/v1/runs?${params}`, { headers: { Accept: "application/json" } });
  if (!res.ok) return false;
  const page = await res.json();
  return page.items.some((r) => r.name === name);
}

export function parseTags(text) {
  return [...new Set(text.split(",").map((t) => t.trim()).filter((t) => t))];
}

async function act(button, work) {
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    showError(err.message);
    button.disabled = false;
  }
}

if (form) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    act(document.getElementById("run-save"), async () => {
      const name = form.elements.name.value.trim();
      if (name !== form.elements.name.defaultValue && await nameTaken(name)) {
        throw new Error(`project ${JSON.stringify(form.dataset.project)} already has a run named '${name}'`);
      }
      await send("PATCH", { name, tags: parseTags(form.elements.tags.value), notes: form.elements.notes.value });
      window.location.reload();
    });
  });
  const archive = document.getElementById("run-archive");
  archive.addEventListener("click", () => act(archive, async () => {
    await send("PATCH", { archived: archive.dataset.archived !== "true" });
    window.location.reload();
  }));
  const remove = document.getElementById("run-delete");
  remove.addEventListener("click", () => {
    if (!window.confirm(remove.dataset.confirm)) return;
    act(remove, async () => {
      await send("DELETE");
      window.location.assign(`/projects/${encodeURIComponent(form.dataset.project)}`);
    });
  });
}
