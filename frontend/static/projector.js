// The embedding projector: draws each [data-view] panel (built by backend/projector.py) as a Plotly `scattergl`
// (WebGL) scatter, one trace per category of the chosen colouring (or one trace coloured point by point, or on a
// colour scale), and redraws every panel when the colour-by or projection selector changes, so two steps stay
// coloured alike. Colours come from the page data: this module maps nothing itself.
import { CONFIG, themed } from "./charts.js";

const root = document.getElementById("projector");
const colorSelect = document.getElementById("projector-color");
const projectionSelect = document.getElementById("projector-projection");
const ONE_COLOUR = "#1F77B4";

function pick(values, indices) {
  return indices.map((i) => values[i]);
}

function byCategory(codes, count) {
  const groups = Array.from({ length: count }, () => []);
  codes.forEach((c, i) => groups[c].push(i));
  return groups;
}

function traces(view, projection, colorBy) {
  const xy = view.projections[projection];
  const spec = view.colorings[colorBy];
  const text = view._text ?? (view._text = view.labels ? view.labels.map(String) : null);
  const base = {
    type: "scattergl",
    mode: "markers",
    hovertemplate: `row %{customdata}${text ? "<br>label %{text}" : ""}<extra>%{fullData.name}</extra>`,
  };
  const marker = { size: view.marker_size };
  const all = { ...base, x: xy.x, y: xy.y, customdata: view.rows, text };
  if (!spec) return [{ ...all, name: "rows", showlegend: false, marker: { ...marker, color: ONE_COLOUR } }];
  if (spec.kind === "scale") {
    return [{
      ...all, name: "k-NN density", showlegend: false,
      marker: { ...marker, color: spec.values, colorscale: spec.colorscale, cmin: spec.cmin, cmax: spec.cmax,
                showscale: true, colorbar: { title: { text: "density" }, thickness: 12 } },
    }];
  }
  if (!spec.legend) {
    return [{ ...all, name: spec.title, showlegend: false,
              marker: { ...marker, color: spec.codes.map((c) => spec.categories[c].color) } }];
  }
  const groups = byCategory(spec.codes, spec.categories.length);
  return spec.categories.map((cat, c) => ({
    ...base, name: cat.name, x: pick(xy.x, groups[c]), y: pick(xy.y, groups[c]),
    customdata: pick(view.rows, groups[c]), text: text && pick(text, groups[c]),
    marker: { ...marker, color: cat.color },
  }));
}

function layout(view, projection, colorBy) {
  const xy = view.projections[projection];
  const spec = view.colorings[colorBy];
  return {
    title: { text: `${view.title} · ${projection.toUpperCase()}` },
    xaxis: { title: { text: xy.x_title }, zeroline: false },
    yaxis: { title: { text: xy.y_title }, zeroline: false, scaleanchor: "x", scaleratio: 1 },
    hovermode: "closest",
    legend: { itemsizing: "constant", title: { text: spec && spec.kind === "category" ? spec.title : "" } },
    margin: { l: 60, r: 20, t: 50, b: 55 },
    height: 560,
    uirevision: projection, // keep the zoom while recolouring; reset it for another projection
  };
}

function draw(el) {
  const view = el._view ?? (el._view = JSON.parse(el.dataset.view));
  const projection = projectionSelect.value;
  const colorBy = colorSelect.value;
  const fig = { data: traces(view, projection, colorBy), layout: layout(view, projection, colorBy) };
  el._figure = fig; // charts.js re-themes it when the colour scheme changes
  return window.Plotly.react(el, fig.data, themed(fig.layout), CONFIG).then(() => {
    el.dataset.drawn = `${projection}:${colorBy}`;
  });
}

function drawAll() {
  return Promise.all([...root.querySelectorAll(".projector-plot")].map(draw));
}

if (root) {
  colorSelect.addEventListener("change", drawAll);
  projectionSelect.addEventListener("change", drawAll);
  drawAll();
}
