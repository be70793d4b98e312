// Upload page: drag and drop, get-or-create the run, stream the file with a real progress bar
// (XMLHttpRequest upload.onprogress), then go to the evaluation page, which shows live status.
const form = document.getElementById("upload-form");
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const dropText = document.getElementById("drop-text");
const bar = document.getElementById("upload-progress");
const text = document.getElementById("upload-text");
const error = document.getElementById("upload-error");
const button = document.getElementById("upload-button");
const checkpointFields = document.getElementById("checkpoint-fields");
let file = null;

const mb = (n) => `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)} MB`;

function choose(f) {
  file = f || null;
  dropText.textContent = file ? `${file.name} · ${mb(file.size)}` : "Drop a file here, or click to choose one";
  drop.classList.toggle("has-file", Boolean(file));
}

function setKind(kind) {
  form.querySelector(`input[name="kind"][value="${kind}"]`).checked = true;
  checkpointFields.hidden = kind !== "checkpoint";
}

function fail(message) {
  error.textContent = message;
  error.hidden = false;
  button.disabled = false;
}

input.addEventListener("change", () => choose(input.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
});
for (const radio of form.querySelectorAll('input[name="kind"]')) {
  radio.addEventListener("change", () => setKind(radio.value));
}

// Signed-in browsers prove each write came from our page with the session's CSRF token (base.html meta).
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrfHeaders = csrfMeta ? { "X-CSRF-Token": csrfMeta.content } : {};

async function loadDatasets() {
  const field = document.getElementById("dataset");
  try {
    const res = await fetch("/api/v1/datasets");
    const datasets = await res.json();
    const list = document.getElementById("dataset-options");
    list.innerHTML = "";
    for (const d of datasets) {
      const option = document.createElement("option");
      option.value = d.name;
      option.label = `${d.name} (${d.kind}${d.n ? `, ${d.n} images` : ""})`;
      list.appendChild(option);
    }
    field.placeholder = datasets.length ? `e.g. ${datasets[0].name}` : "dataset name";
    form.dataset.datasets = String(datasets.length);
  } catch (err) {
    field.placeholder = "dataset name";
  }
}

function send(runId, fields) {
  return new Promise((resolve, reject) => {
    const body = new FormData();
    for (const [k, v] of Object.entries(fields)) if (v !== "" && v !== null) body.append(k, v);
    body.append("file", file, file.name);  // fields first, then the streamed file
    const xhr = new XMLHttpRequest();
    let events = 0;
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      events += 1;
      bar.value = e.loaded / e.total;
      text.textContent = `${mb(e.loaded)} of ${mb(e.total)} (${Math.round((100 * e.loaded) / e.total)} %)`;
      sessionStorage.setItem("repscope-upload", JSON.stringify({ loaded: e.loaded, total: e.total, events }));
    };
    xhr.onload = () => {
      let json = null;
      try { json = JSON.parse(xhr.responseText); } catch (err) { /* not JSON */ }
      if (xhr.status === 202 && json) resolve(json);
      else reject(new Error(json && json.detail ? json.detail : `upload failed: HTTP ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("the connection failed during the upload"));
    xhr.open("POST", `/api/v1/runs/${runId}/artifacts`);
    for (const [k, v] of Object.entries(csrfHeaders)) xhr.setRequestHeader(k, v);
    xhr.send(body);
  });
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  error.hidden = true;
  const data = new FormData(form);
  const project = (data.get("project") || "").trim();
  const name = (data.get("run") || "").trim();
  if (!project || !name) return fail("Name the project and the run.");
  if (!file) return fail("Choose or drop a file first.");
  button.disabled = true;
  text.textContent = "creating the run…";
  try {
    const res = await fetch("/api/v1/runs", {
      method: "POST", headers: { "Content-Type": "application/json", ...csrfHeaders },
      body: JSON.stringify({ project, name }),
    });
    const run = await res.json();
    if (!res.ok) throw new Error(run.detail || `HTTP ${res.status}`);
    const kind = data.get("kind");
    const fields = { kind, step: data.get("step") || "0", dataset: (data.get("dataset") || "").trim(),
                     suites: data.getAll("suites").join(",") };
    if (kind === "checkpoint") {
      Object.assign(fields, { arch: (data.get("arch") || "").trim(), pool: data.get("pool"),
                              output: data.get("output"), views: data.get("views") || "0" });
      for (const name of ["arch_kwargs", "checkpoint_key", "mean", "std", "resize", "crop", "interpolation"]) {
        const value = (data.get(name) || "").trim();
        if (value) fields[name] = value;
      }
    }
    const accepted = await send(run.id, fields);
    bar.value = 1;
    text.textContent = `uploaded · ${accepted.evaluations.length} evaluation(s) queued`;
    const first = accepted.evaluations[0];
    window.location.assign(first ? `/evaluations/${first.id}` : `/runs/${run.id}`);
  } catch (err) {
    fail(err.message);
  }
});

loadDatasets();
