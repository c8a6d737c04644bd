// WeightsLab UI: the charts of a page, drawn with ECharts from JSON the server embedded in the page.
//
// Each chart is an element with data-chart="KIND" and data-source="ID" (a hidden element whose data-json
// attribute holds its data: htmx drops <script> elements from the content it swaps in). Charts are (re)drawn whenever htmx puts new content in the page, and disposed of when
// htmx removes it. Text from the store reaches the charts as data only, and every tooltip and label is
// drawn on the canvas (renderMode "richText"), never parsed as HTML.
"use strict";

(function () {
  const PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5",
                   "#9c6b4e", "#9498a0"];
  const TOOLTIP = { renderMode: "richText", confine: true };

  function data(el) {
    const source = document.getElementById(el.dataset.source);
    return source ? JSON.parse(source.dataset.json) : null;
  }

  function fmt(x, digits) {
    if (x === null || x === undefined) return "—";
    return typeof x === "number" ? x.toLocaleString(undefined, { maximumFractionDigits: digits ?? 4 }) : String(x);
  }

  // -- loss and accuracy against model age: one line per branch and split, operations as marker lines --
  function curves(el, d) {
    const metric = el.dataset.metric === "accuracy" ? 2 : 1;
    const many = d.compare === true;
    const series = [];
    d.branches.forEach((b, i) => {
      const label = (many ? b.experiment + " · " : "") + b.name;
      const color = PALETTE[i % PALETTE.length];
      let first = null;
      for (const split of ["train", "eval"]) {
        if (!b[split].length) continue;
        const s = {
          name: label + " · " + split, type: "line", color: color, showSymbol: b[split].length < 150,
          symbolSize: 5, lineStyle: { width: 1.5, type: split === "eval" ? "dashed" : "solid" },
          data: b[split].map((p) => ({ value: [p[0], p[metric]], seq: p[3] })),
          wl: { branch: b.name, experiment: b.experiment, split: split },
        };
        series.push(s);
        first = first || s;
      }
      if (first && b.markers.length && !many) first.markLine = markers(b.markers, color);
    });
    return {
      animation: false, color: PALETTE,
      tooltip: Object.assign({ trigger: "item", formatter: curveTip(metric) }, TOOLTIP),
      legend: { type: "scroll", top: 0 },
      grid: { left: 56, right: 24, top: 56, bottom: 64 },
      xAxis: { type: "value", name: "model age (samples)", nameLocation: "middle", nameGap: 28, scale: true },
      yAxis: { type: "value", name: metric === 1 ? "loss" : "accuracy", scale: true },
      dataZoom: [{ type: "inside" }, { type: "slider", height: 18, bottom: 6 }],
      series: series,
    };
  }

  function markers(list, color) {
    const byAge = new Map();
    for (const [age, seq, kind, summary] of list) {
      const lines = byAge.get(age) || [];
      lines.push("seq " + seq + "  " + summary);
      byAge.set(age, lines);
    }
    return {
      silent: false, symbol: ["none", "diamond"], symbolSize: 9, animation: false,
      label: { show: false }, lineStyle: { color: color, type: "dotted", width: 1.5, opacity: 0.7 },
      emphasis: { lineStyle: { width: 3 } },
      tooltip: Object.assign({ trigger: "item", formatter: (p) => p.data.text }, TOOLTIP),
      data: Array.from(byAge, ([age, lines]) => ({ xAxis: age, text: lines.join("\n"), count: lines.length })),
    };
  }

  function curveTip(metric) {
    return (p) => {
      if (p.componentType === "markLine") return p.data.text;
      const [age, y] = p.value;
      return p.seriesName + "\nage " + fmt(age, 0) + "\n" + (metric === 1 ? "loss " : "accuracy ") + fmt(y) +
        "\nseq " + p.data.seq;
    };
  }

  // -- the checkpoint tree: click a checkpoint to see its diff against its parent --
  function lineage(el, d) {
    const chart = echarts.getInstanceByDom(el);
    chart.off("click");
    chart.on("click", (p) => {
      if (p.data && p.data.checkpoint !== null && p.data.checkpoint !== undefined) {
        const url = el.dataset.diffUrl.replace("CHECKPOINT", String(p.data.checkpoint));
        htmx.ajax("GET", url, { target: el.dataset.diffTarget, swap: "innerHTML" });
      }
    });
    const style = (n) => {
      n.itemStyle = n.head ? { color: "#ff725c", borderColor: "#ff725c" } : { color: "#4269d0" };
      n.label = { formatter: n.checkpoint === null ? "initial state" :
        "checkpoint " + n.checkpoint + " · age " + fmt(n.age, 0) + " · [" + n.widths.join(", ") + "]" };
      (n.children || []).forEach(style);
      return n;
    };
    return {
      animation: false,
      tooltip: Object.assign({
        trigger: "item",
        formatter: (p) => p.data.checkpoint === null ? "initial state" :
          "checkpoint " + p.data.checkpoint + " (seq " + p.data.seq + ")\n" + (p.data.ops || []).join("\n"),
      }, TOOLTIP),
      series: [{
        type: "tree", data: [style(d)], orient: "LR", top: 24, bottom: 24, left: 90, right: 260,
        symbolSize: 14, expandAndCollapse: false, initialTreeDepth: -1, roam: true,
        label: { position: "bottom", distance: 8, fontSize: 11 },
        leaves: { label: { position: "right", align: "left", verticalAlign: "middle", distance: 8 } },
      }],
    };
  }

  // -- trigger rates of one layer and split: a column per snapshot (and now), a row per neuron --
  function heatmap(el, d) {
    const split = el.dataset.split;
    const neurons = Array.from({ length: d.rows }, (_, i) => String(i));
    return {
      animation: false,
      tooltip: Object.assign({
        trigger: "item",
        formatter: (p) => "neuron " + p.value[1] + ", " + d.columns[p.value[0]] + "\n" + split +
          " trigger rate " + fmt(p.value[2]),
      }, TOOLTIP),
      grid: { left: 48, right: 16, top: 8, bottom: 72 },
      xAxis: { type: "category", data: d.columns, axisLabel: { rotate: 30, fontSize: 10 } },
      yAxis: { type: "category", data: neurons, name: "neuron", inverse: true },
      visualMap: { min: 0, max: 1, calculable: true, orient: "horizontal", left: "center", bottom: 0,
                   itemHeight: 120, itemWidth: 10, inRange: { color: ["#111827", "#4269d0", "#6cc5b0", "#efb118"] } },
      series: [{ type: "heatmap", name: split, data: d.heat[split].filter((c) => c[2] !== null) }],
    };
  }

  // -- the width of every layer after each event that changed one --
  function widths(el, d) {
    const series = [];
    for (let layer = 0; layer < d.layers; layer++) {
      const points = d.points.map((p) => [p[0], p[1][layer] ?? null]);
      if (points.length) points.push([d.last_seq, points[points.length - 1][1]]);
      series.push({ name: "layer " + layer, type: "line", step: "end", showSymbol: false, data: points });
    }
    return {
      animation: false, color: PALETTE,
      tooltip: Object.assign({ trigger: "axis" }, TOOLTIP), legend: { top: 0 },
      grid: { left: 48, right: 24, top: 32, bottom: 40 },
      xAxis: { type: "value", name: "seq", nameLocation: "middle", nameGap: 24, min: 1 },
      yAxis: { type: "value", name: "neurons", minInterval: 1 },
      series: series,
    };
  }

  // -- the loss histogram, a bar per label and bin --
  function histogram(el, d) {
    const bins = d.edges.slice(0, -1).map((lo, i) => fmt(lo, 3) + "–" + fmt(d.edges[i + 1], 3));
    return {
      animation: false, color: PALETTE,
      tooltip: Object.assign({ trigger: "axis" }, TOOLTIP), legend: { type: "scroll", top: 0 },
      grid: { left: 56, right: 16, top: 32, bottom: 56 },
      xAxis: { type: "category", data: bins, name: "loss", nameLocation: "middle", nameGap: 40,
               axisLabel: { rotate: 30, fontSize: 10 } },
      yAxis: { type: "value", name: d.stride > 1 ? "samples (estimated)" : "samples" },
      series: Object.entries(d.counts).map(([label, counts]) => ({
        name: "label " + label, type: "bar", stack: "labels", data: counts, barCategoryGap: "10%",
      })),
    };
  }

  const BUILDERS = { curves, lineage, heatmap, widths, histogram };

  function draw(root) {
    const found = [...root.querySelectorAll("[data-chart]")];
    if (root.matches && root.matches("[data-chart]")) found.push(root);
    found.forEach((el) => {
      const d = data(el);
      const build = BUILDERS[el.dataset.chart];
      if (!d || !build) return;
      const chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(build(el, d), { notMerge: true });
      el.dataset.drawn = "true";
    });
  }

  htmx.onLoad((el) => { if (el.querySelectorAll) draw(el); });
  document.addEventListener("htmx:beforeCleanupElement", (e) => {
    const el = e.target;
    if (el.dataset && el.dataset.chart) echarts.getInstanceByDom(el)?.dispose();
  });
  window.addEventListener("resize", () => {
    document.querySelectorAll("[data-drawn]").forEach((el) => echarts.getInstanceByDom(el)?.resize());
  });
})();
