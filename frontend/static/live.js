// Polls a page's live JSON endpoint ([data-live]) and updates fragments in place: no full-page reload.
// Response: {pending, version?, html: {elementId: innerHTML}, charts?, nested?}. The request says which `version`
// (of the run's metric rows) the page shows; charts come back, and are redrawn with Plotly.react (zoom and
// legend state survive), only when it changed.
import { drawFigure } from "./charts.js";

function syncCharts(container, figures) {
  if (!container || !figures) return;
  const plots = [...container.querySelectorAll(":scope > .plot")];
  while (plots.length > figures.length) plots.pop().remove();
  while (plots.length < figures.length) {
    const el = document.createElement("div");
    el.className = "plot";
    container.appendChild(el);
    plots.push(el);
  }
  figures.forEach((fig, i) => {
    plots[i].dataset.figure = JSON.stringify(fig);
    drawFigure(plots[i], fig);
  });
}

function start(root) {
  const url = root.dataset.live;
  let version = root.dataset.version;
  const tick = async () => {
    let every = Number(root.dataset.every || 5);
    try {
      const query = version !== undefined ? `${url.includes("?") ? "&" : "?"}since=${encodeURIComponent(version)}` : "";
      const res = await fetch(url + query, { headers: { Accept: "application/json" } });
      if (res.ok) {
        const live = await res.json();
        for (const [id, html] of Object.entries(live.html || {})) {
          const el = document.getElementById(id);
          if (el && el.innerHTML !== html) el.innerHTML = html;
        }
        if (live.version !== undefined && live.version !== version && live.charts) {
          version = live.version;
          syncCharts(root.querySelector('[data-charts="charts"]'), live.charts);
          syncCharts(root.querySelector('[data-charts="nested"]'), live.nested);
          const nested = document.getElementById("nested-section");
          if (nested) nested.hidden = !(live.nested || []).length;
        }
        root.dataset.version = version ?? "";
        root.dataset.pending = live.pending ? "1" : "0";
        root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
        every = live.pending ? 2 : 5;  // fast while work is queued or running
      }
    } catch (err) {
      console.warn("live update failed", err);
    }
    setTimeout(tick, every * 1000);
  };
  setTimeout(tick, Number(root.dataset.every || 5) * 1000);
}

for (const root of document.querySelectorAll("[data-live]")) start(root);
