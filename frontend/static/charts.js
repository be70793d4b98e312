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

// --- run page controls (#chart-controls): smoothing, x-axis mode, log/linear y per chart ---------------------
// Applied here to the figure JSON before drawing, so live redraws (static/live.js) keep them.
export const view = { ema: 0, x: "step" };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];  // Plotly's default colorway: a smoothed line and its faint raw series share a colour
const X_TITLES = { step: "training step", wall: "wall time (upload of the step's artifact)",
  relative: "time since the run's first point (s)" };
const NO_TIMES = "No wall times: they come from artifact uploads, and none covers these steps";
const LOG_ICON = { width: 1000, height: 1000, path: "M100 900 L100 100 M100 900 L900 900 M150 800 C300 300 500 200 900 150" };

// Exponential moving average: s_0 = y_0, s_i = a s_{i-1} + (1 - a) y_i (a = the slider's weight, 0 = off).
export function ema(ys, a) {
  const out = [];
  let s = null;
  for (const y of ys) {
    s = s === null ? y : a * s + (1 - a) * y;
    out.push(s);
  }
  return out;
}

function controlled(el) {
  return Boolean(document.getElementById("chart-controls") && el.closest("#run-live"));
}

function yType(el, layout) {
  return el.dataset.ytype || (layout.yaxis && layout.yaxis.type) || "linear";
}

function logButton(el) {
  return { name: "logy", title: "Log / linear y-axis", icon: LOG_ICON, click: () => {
    el.dataset.ytype = yType(el, el._figure.layout) === "log" ? "linear" : "log";
    drawFigure(el, el._figure);
  } };
}

function xOf(trace, t0) {  // [x, kept indices] for the current x-axis mode; points without a time are dropped
  if (view.x === "step") return [trace.x, null];
  if (!trace.customdata) return [[], []];  // the run has no uploads: no wall times at all
  const keep = trace.customdata.map((t, i) => (t === null || t === undefined ? -1 : i)).filter((i) => i >= 0);
  const x = keep.map((i) => (view.x === "wall" ? new Date(trace.customdata[i] * 1000).toISOString()
    : trace.customdata[i] - t0));
  return [x, keep];
}

export function viewed(el, fig) {
  if (!controlled(el) || (fig.layout.meta && fig.layout.meta.empty)) return fig;
  const t0 = fig.layout.meta ? fig.layout.meta.t0 : undefined;
  const data = [];
  fig.data.forEach((trace, i) => {
    const color = PALETTE[i % PALETTE.length];
    const [x, keep] = xOf(trace, t0);
    const y = keep ? keep.map((j) => trace.y[j]) : trace.y;
    const hovertemplate = view.x === "step" ? trace.hovertemplate
      : (trace.hovertemplate || "").replace("step %{x}", view.x === "wall" ? "%{x}" : "%{x:.0f} s");
    const base = { ...trace, x, y, hovertemplate, legendgroup: trace.name,
      line: { color, ...(trace.line || {}) }, marker: { color, ...(trace.marker || {}) } };
    if (view.ema > 0 && y.length > 1) {
      data.push({ ...base, showlegend: false, opacity: 0.25, hoverinfo: "skip", hovertemplate: undefined,
        meta: { raw: true } });
      data.push({ ...base, y: ema(y, view.ema), meta: { smoothed: view.ema } });
    } else {
      data.push(base);
    }
  });
  const ytype = yType(el, fig.layout);
  const yaxis = { ...(fig.layout.yaxis || {}), type: ytype };
  if (ytype === "log") delete yaxis.range;  // a 0-100 % range is meaningless on a log axis
  else if ((fig.layout.yaxis || {}).type === "log") delete yaxis.dtick;
  const xaxis = { ...(fig.layout.xaxis || {}), type: view.x === "wall" ? "date" : "linear",
    title: { text: X_TITLES[view.x] } };
  const layout = { ...fig.layout, xaxis, yaxis, uirevision: `${view.x}:${ytype}` };
  if (view.x !== "step" && data.every((t) => !t.x.length)) {
    layout.annotations = [...(fig.layout.annotations || []), { text: NO_TIMES, showarrow: false, xref: "paper",
      yref: "paper", x: 0.5, y: 0.5 }];
  }
  return { data, layout };
}

export function drawFigure(el, fig) {
  el._figure = fig;
  const closed = el.closest("details:not([open])");
  if (closed) {  // Plotly cannot size a hidden element: draw when the section opens
    el.dataset.pending = "1";
    return;
  }
  delete el.dataset.pending;
  const shown = viewed(el, fig);
  const config = controlled(el) ? { ...CONFIG, modeBarButtonsToAdd: [logButton(el)] } : CONFIG;
  window.Plotly.react(el, shown.data, themed(shown.layout), config);
}

function redrawControlled() {
  for (const el of document.querySelectorAll("#run-live [data-figure]")) {
    if (el._figure) drawFigure(el, el._figure);
  }
}

function bindControls() {
  const box = document.getElementById("chart-controls");
  if (!box) return;
  const slider = box.querySelector("#ema");
  const out = box.querySelector("#ema-value");
  const mode = box.querySelector("#x-mode");
  slider.addEventListener("input", () => {
    view.ema = Number(slider.value);
    out.textContent = view.ema.toFixed(2);
    redrawControlled();
  });
  mode.addEventListener("change", () => {
    view.x = mode.value;
    redrawControlled();
  });
  view.ema = Number(slider.value);
  view.x = mode.value;
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
    if (el._figure) window.Plotly.relayout(el, themed(viewed(el, el._figure).layout));
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

bindControls();
drawAll();
document.documentElement.dataset.chartsReady = "1";
const box = document.querySelector("[data-poll]");
if (box) pollEvaluation(box);
