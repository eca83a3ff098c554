// The gallery: pages, sorts and filters the rows of the JSON block #report-data.
// Plain DOM, no library: sorting is Array.prototype.sort on one precomputed key per row, and every
// text from the data goes in through textContent or setAttribute, never as HTML.
(function () {
  "use strict";
  var dataEl = document.getElementById("report-data");
  var root = document.getElementById("rows");
  if (!dataEl || !root) return;
  var D = JSON.parse(dataEl.textContent);
  var R = D.rows, N = R.prompt.length, M = D.models.length;
  var lower = R.prompt.map(function (p) { return p.toLowerCase(); });
  var state = { set: -1, text: "", sort: "order", desc: false, page: 0, size: D.pageSize };
  var $ = function (id) { return document.getElementById(id); };

  function h(tag, attrs, children) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]);
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }
  function fmt(v) { return isNaN(v) ? "-" : v.toFixed(4); }
  function signed(v) { return isNaN(v) ? "-" : (v > 0 ? "+" : v < 0 ? "\u2212" : "\u00b1") + Math.abs(v).toFixed(4); }

  function runOf(row, m) { var ri = D.sets[R.set[row]].runs[m]; return ri < 0 ? null : D.runs[ri]; }
  function score(row, m, key) {
    var run = runOf(row, m), i = R.cells[row][m];
    if (!run || i < 0 || !run.scores[key]) return NaN;
    var v = run.scores[key][i];
    return v === null ? NaN : v;
  }
  function spread(row, key) {
    var lo = Infinity, hi = -Infinity, n = 0;
    for (var m = 0; m < M; m++) {
      var v = score(row, m, key);
      if (!isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); n++; }
    }
    return n > 1 ? hi - lo : NaN;
  }

  // Sort keys: "order", "prompt", "diff:<metric>" (first minus second model), "spread:<metric>", "score:<m>:<metric>".
  function sortOptions() {
    var opts = [["order", "manifest order"], ["prompt", "prompt (A\u2013Z)"]];
    D.metrics.forEach(function (mt) {
      if (D.mode === "ab") opts.push(["diff:" + mt.key, "\u0394 " + mt.label + " (difference)"]);
      if (D.mode === "grid") opts.push(["spread:" + mt.key, mt.label + " spread (max \u2212 min)"]);
    });
    D.metrics.forEach(function (mt) {
      D.models.forEach(function (label, m) { opts.push(["score:" + m + ":" + mt.key, mt.label + " of " + label]); });
    });
    return opts;
  }
  function keyFunction(sort) {
    var parts = sort.split(":");
    if (parts[0] === "diff") return function (r) { return score(r, 0, parts[1]) - score(r, 1, parts[1]); };
    if (parts[0] === "spread") return function (r) { return spread(r, parts[1]); };
    if (parts[0] === "score") return function (r) { return score(r, +parts[1], parts[2]); };
    return null;
  }

  function visibleRows() {
    var q = state.text.toLowerCase(), idx = [];
    for (var r = 0; r < N; r++) {
      if (state.set >= 0 && R.set[r] !== state.set) continue;
      if (q && lower[r].indexOf(q) < 0) continue;
      idx.push(r);
    }
    var dir = state.desc ? -1 : 1;
    if (state.sort === "prompt") {
      var coll = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });
      idx.sort(function (a, b) { return dir * coll.compare(R.prompt[a], R.prompt[b]) || a - b; });
    } else if (state.sort !== "order") {
      var f = keyFunction(state.sort), key = new Float64Array(N);
      idx.forEach(function (r) { key[r] = f(r); });
      idx.sort(function (a, b) {  // rows without a value last, whichever the direction; ties in manifest order
        var x = key[a], y = key[b];
        if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y) || a - b;
        return dir * (x - y) || a - b;
      });
    } else if (state.desc) {
      idx.reverse();
    }
    return idx;
  }

  function mediaCell(row, m) {
    var run = runOf(row, m), i = R.cells[row][m];
    if (!run || i < 0) return h("div", { "class": "missing" }, ["not in " + D.models[m]]);
    var thumb = Array.isArray(run.thumbs) ? run.thumbs[i] : run.thumbs.dir + i + run.thumbs.ext;
    if (run.media === "video") {
      return h("video", { src: run.video.dir + i + run.video.ext, poster: thumb, muted: "", loop: "", playsinline: "",
                          preload: "none", controls: "", "class": "clip", title: R.prompt[row] });
    }
    var img = h("img", { src: thumb, loading: "lazy", decoding: "async", alt: R.prompt[row] });
    return h("a", { href: run.base + run.names[i], target: "_blank", rel: "noopener" }, [img]);
  }
  function scoreTable(row, m, active) {
    var t = h("table", { "class": "scores" });
    D.metrics.forEach(function (mt) {
      var v = score(row, m, mt.key);
      if (isNaN(v)) return;
      t.appendChild(h("tr", { "class": mt.key === active ? "active" : null },
        [h("th", {}, [mt.label]), h("td", { "data-metric": mt.key, "data-v": String(v) }, [fmt(v)])]));
    });
    return t;
  }
  function diffTable(row, active) {
    var t = h("table", { "class": "scores diffs" });
    D.metrics.forEach(function (mt) {
      var d = score(row, 0, mt.key) - score(row, 1, mt.key);
      var cls = (d > 0 ? "d-pos" : d < 0 ? "d-neg" : "") + (mt.key === active ? " active" : "");
      t.appendChild(h("tr", { "class": cls || null }, [h("th", {}, ["\u0394 " + mt.label]),
        h("td", { "class": "diff", "data-metric": mt.key, "data-v": isNaN(d) ? "" : String(d) }, [signed(d)])]));
    });
    return t;
  }
  function rowElement(row, active) {
    var set = D.sets[R.set[row]].name, first = R.cells[row].filter(function (i) { return i >= 0; })[0];
    var prompt = h("div", { "class": "prompt" }, [h("span", { "class": "set" }, [set]),
      h("span", { "class": "idx" }, ["#" + first]), h("div", { "class": "text" }, [R.prompt[row]])]);
    var el = h("div", { "class": "row", "data-row": String(row) }, [prompt]);
    for (var m = 0; m < M; m++) {
      el.appendChild(h("figure", { "class": "cell", "data-model": String(m) }, [mediaCell(row, m), scoreTable(row, m, active)]));
    }
    el.appendChild(D.mode === "ab" ? diffTable(row, active) : h("div"));
    return el;
  }
  function header() {
    var cells = [h("div", {}, ["prompt"])];
    D.models.forEach(function (label) { cells.push(h("div", {}, [label])); });
    cells.push(h("div", {}, [D.mode === "ab" ? "\u0394 = " + D.models[0] + " \u2212 " + D.models[1] : ""]));
    return h("div", { "class": "row head" }, cells);
  }

  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting) { var p = e.target.play(); if (p && p.catch) p.catch(function () {}); }
      else e.target.pause();
    });
  }, { rootMargin: "100px" }) : null;

  function render() {
    var t0 = performance.now();
    var idx = visibleRows(), pages = Math.max(1, Math.ceil(idx.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.size, shown = idx.slice(start, start + state.size);
    var parts = state.sort.split(":"), active = parts[parts.length - 1];
    var frag = document.createDocumentFragment();
    frag.appendChild(header());
    shown.forEach(function (r) { frag.appendChild(rowElement(r, active)); });
    if (observer) observer.disconnect();
    root.replaceChildren(frag);
    if (observer) root.querySelectorAll("video").forEach(function (v) { v.muted = true; observer.observe(v); });
    $("f-status").textContent = idx.length ? "rows " + (start + 1) + "\u2013" + (start + shown.length) + " of " + idx.length +
      (idx.length < N ? " (of " + N + ")" : "") + ", page " + (state.page + 1) + " / " + pages : "no rows match";
    $("f-prev").disabled = state.page === 0;
    $("f-next").disabled = state.page >= pages - 1;
    root.dataset.renderMs = String(performance.now() - t0);
  }

  function setup() {
    var style = document.documentElement.style;
    style.setProperty("--cols", String(M));
    var fset = $("f-set");
    fset.appendChild(h("option", { value: "-1" }, ["all (" + N + ")"]));
    D.sets.forEach(function (s, i) {
      var n = R.set.filter(function (x) { return x === i; }).length;
      fset.appendChild(h("option", { value: String(i) }, [s.name + " (" + n + ")"]));
    });
    if (D.sets.length < 2) fset.parentNode.hidden = true;
    var fsort = $("f-sort");
    sortOptions().forEach(function (o) { fsort.appendChild(h("option", { value: o[0] }, [o[1]])); });
    $("f-size").value = String(state.size);
    if ($("f-size").value !== String(state.size)) {
      $("f-size").appendChild(h("option", {}, [String(state.size)]));
      $("f-size").value = String(state.size);
    }
    function dirLabel() { $("f-dir").textContent = state.desc ? "\u2193 descending" : "\u2191 ascending"; }
    dirLabel();
    fset.addEventListener("change", function () { state.set = +fset.value; state.page = 0; render(); });
    var timer = null;
    $("f-text").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.text = $("f-text").value; state.page = 0; render(); }, 120);
    });
    fsort.addEventListener("change", function () {
      state.sort = fsort.value;
      state.desc = state.sort !== "order" && state.sort !== "prompt";  // metrics: best first
      state.page = 0; dirLabel(); render();
    });
    $("f-dir").addEventListener("click", function () { state.desc = !state.desc; state.page = 0; dirLabel(); render(); });
    $("f-size").addEventListener("change", function () { state.size = +$("f-size").value; state.page = 0; render(); });
    $("f-prev").addEventListener("click", function () { state.page--; render(); window.scrollTo(0, root.offsetTop - 60); });
    $("f-next").addEventListener("click", function () { state.page++; render(); window.scrollTo(0, root.offsetTop - 60); });
    $("controls").hidden = false;
    render();
    performance.mark("report-rendered");
  }
  setup();
})();
