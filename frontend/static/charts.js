// Draws every [data-figure] element with Plotly, themed for light or dark; polls an evaluation's live status.
// Figure JSON is built in Python (backend/figures.py); this module only themes and draws it.
const scheme = window.matchMedia("(prefers-color-scheme: dark)");

function colors() {
  const dark = scheme.matches;
  return { fg: dark ? "#e6e6e6" : "#1d1d1f", grid: dark ? "#3a3a3c" : "#e5e5ea" };
}

export function themed(layout) {
  const { fg, grid } = colors();
  const out = {
    ...layout,
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: fg },
    legend: { bgcolor: "rgba(0,0,0,0)", ...(layout.legend || {}) },
    hoverlabel: { namelength: -1, ...(layout.hoverlabel || {}) },
    uirevision: layout.uirevision ?? "keep", // live redraws keep the user's zoom and hidden traces
  };
  if (layout.polar) {
    out.polar = {
      bgcolor: "rgba(0,0,0,0)",
      ...layout.polar,
      radialaxis: { gridcolor: grid, linecolor: grid, ...(layout.polar.radialaxis || {}) },
      angularaxis: { gridcolor: grid, linecolor: grid, ...(layout.polar.angularaxis || {}) },
    };
  } else {
    out.xaxis = { gridcolor: grid, ...(layout.xaxis || {}) };
    out.yaxis = { gridcolor: grid, ...(layout.yaxis || {}) };
  }
  return out;
}

// Self-hosted: nothing may leave for Plotly's cloud. "Share chart…" (showSendToCloud, on by default in
// plotly.js) and "Edit in Chart Studio" post the figure's data there; both off, and no server URL to post to.
export const CONFIG = Object.freeze({
  responsive: true,
  displaylogo: false,
  showSendToCloud: false,
  showEditInChartStudio: false,
  plotlyServerURL: "",
  modeBarButtonsToRemove: ["sendChartToCloud", "editInChartStudio"],
});

export function drawFigure(el, fig) {
  el._figure = fig;
  const closed = el.closest("details:not([open])");
  if (closed) {  // Plotly cannot size a hidden element: draw when the section opens
    el.dataset.pending = "1";
    return;
  }
  delete el.dataset.pending;
  window.Plotly.react(el, fig.data, themed(fig.layout), CONFIG);
}

export function drawAll(root = document) {
  for (const el of root.querySelectorAll("[data-figure]")) {
    drawFigure(el, JSON.parse(el.dataset.figure));
  }
}

document.addEventListener("toggle", (event) => {
  const details = event.target;
  if (!(details instanceof HTMLDetailsElement) || !details.open) return;
  for (const el of details.querySelectorAll("[data-pending]")) drawFigure(el, el._figure);
}, true);

scheme.addEventListener("change", () => {
  for (const el of document.querySelectorAll(".js-plotly-plot")) {
    if (el._figure) window.Plotly.relayout(el, themed(el._figure.layout));
  }
});

async function pollEvaluation(box) {
  const id = box.dataset.evaluation;
  const every = Number(box.dataset.poll) * 1000;
  const tick = async () => {
    try {
      const res = await fetch(`/api/v1/evaluations/${id}`);
      if (res.ok) {
        const ev = await res.json();
        box.querySelector("#progress").value = ev.progress;
        box.querySelector("#message").textContent = ev.message || "";
        const status = box.querySelector("#status-text");
        status.textContent = ev.status;
        status.className = `status ${ev.status}`;
        if (["succeeded", "failed", "cancelled"].includes(ev.status)) {
          window.location.reload();  // once, when finished: the results, charts and variant appear
          return;
        }
      }
    } catch (err) {
      console.warn("status poll failed", err);
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

drawAll();
document.documentElement.dataset.chartsReady = "1";
const box = document.querySelector("[data-poll]");
if (box) pollEvaluation(box);
