// Queue control on the evaluation and jobs pages (issue #20). Cancel / retry buttons ([data-queue-action]) POST to
// the REST API (/api/v1/evaluations/{id}/cancel|retry) with the session's CSRF token, then reload the page so it
// shows the new state; a refusal is shown next to them. On an unfinished evaluation's page #queue-info (queue
// position, elapsed, ETA) follows the API every 2 s. Durations read as frontend/templates/_queue.html writes them.
const POLL_MS = 2000;

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

export function duration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function queueInfo(ev) {
  if (ev.status === "queued") {
    return ev.queue_position ? `position ${ev.queue_position} in queue ${ev.queue || "—"}` : "waiting to be sent to a queue";
  }
  if (ev.status === "running") {
    return `elapsed ${duration(ev.elapsed_s)} · ` + (ev.eta_s !== null && ev.eta_s !== undefined ? `ETA ${duration(ev.eta_s)}` : "ETA after 5 %");
  }
  return ev.elapsed_s !== null && ev.elapsed_s !== undefined ? `ran ${duration(ev.elapsed_s)}` : "";
}

function showRefusal(text) {
  const box = document.getElementById("queue-feedback");
  if (!box) return;
  box.textContent = text;
  box.hidden = false;
}

document.addEventListener("click", async (event) => {
  const button = event.target instanceof Element ? event.target.closest("button[data-queue-action]") : null;
  if (!button) return;
  const { queueAction: action, evaluationId: id } = button.dataset;
  button.disabled = true;
  try {
    const res = await fetch(`/api/v1/evaluations/${encodeURIComponent(id)}/${action}`, {
      method: "POST", headers: { Accept: "application/json", "X-CSRF-Token": csrfToken() },
    });
    if (res.ok) {
      window.location.reload();
      return;
    }
    const body = await res.json().catch(() => ({}));
    showRefusal(`${action} of evaluation ${id} refused: ${body.detail || `HTTP ${res.status}`}`);
  } catch (err) {
    showRefusal(`${action} of evaluation ${id} failed: ${err}`);
  }
  button.disabled = false;
});

function followEvaluation(box) {
  const info = document.getElementById("queue-info");
  if (!info) return;
  const tick = async () => {
    try {
      const res = await fetch(`/api/v1/evaluations/${box.dataset.evaluation}`, { headers: { Accept: "application/json" } });
      if (res.ok) {
        const ev = await res.json();
        info.textContent = queueInfo(ev);
        if (["succeeded", "failed", "cancelled"].includes(ev.status)) return;  // charts.js reloads the page
      }
    } catch (err) {
      console.warn("queue info update failed", err);
    }
    setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}

const box = document.querySelector("#status[data-poll]");
if (box) followEvaluation(box);
