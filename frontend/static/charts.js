// Draws every [data-figure] element with Plotly, themed for light or dark; polls live status.
const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;

function themed(layout) {
  const fg = dark ? "#e6e6e6" : "#1d1d1f";
  const grid = dark ? "#3a3a3c" : "#e5e5ea";
  return {
    ...layout,
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: fg },
    xaxis: { gridcolor: grid, ...(layout.xaxis || {}) },
    yaxis: { gridcolor: grid, ...(layout.yaxis || {}) },
  };
}

export function drawAll(root = document) {
  for (const el of root.querySelectorAll("[data-figure]")) {
    const fig = JSON.parse(el.dataset.figure);
    window.Plotly.newPlot(el, fig.data, themed(fig.layout), { responsive: true, displaylogo: false });
  }
}

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
          window.location.reload();
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
const box = document.querySelector("[data-poll]");
if (box) pollEvaluation(box);
const refresh = document.querySelector("[data-refresh]");
if (refresh) setTimeout(() => window.location.reload(), Number(refresh.dataset.refresh) * 1000);
