/* zoomfeat viewer: index table, slide page (OpenSeadragon + overlays + click panel + gallery), gallery page.
   All data comes from window.ZF, embedded in each page, so the static export works from file:// too. */
(function () {
  "use strict";
  var ZF = window.ZF, base = ZF.base;

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "html") e.innerHTML = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function fmt(v, d) {
    if (typeof v !== "number" || Number.isInteger(v)) return String(v);
    return v.toFixed(d === undefined ? 3 : d);
  }
  function cropUrl(sid, x, y, s) {
    return base + "crop/" + encodeURIComponent(sid) + "/" + Math.round(x) + "_" + Math.round(y) + "_" + Math.round(s) + ".jpg";
  }

  /* ------------------------------------------------------------------ index */
  function runVisible(r) {
    var t = document.getElementById("task").value, m = document.getElementById("model").value;
    return (!t || r.target === t) && (!m || r.model === m);
  }
  function index() {
    var runs = ZF.runs, slides = ZF.slides;
    var labelKeys = [];
    slides.forEach(function (s) { Object.keys(s.labels).forEach(function (k) { if (labelKeys.indexOf(k) < 0) labelKeys.push(k); }); });
    ["task", "model"].forEach(function (id) {
      var key = id === "task" ? "target" : "model", seen = [];
      runs.forEach(function (r) { if (seen.indexOf(r[key]) < 0) seen.push(r[key]); });
      var sel = document.getElementById(id);
      seen.forEach(function (v) { sel.appendChild(el("option", { value: v, text: v })); });
      sel.onchange = draw;
    });
    var sortKey = null, sortDir = 1;
    document.getElementById("filter").oninput = draw;
    document.getElementById("wrongfirst").onchange = draw;

    function cellValue(s, key) {
      if (key === "slide" || key === "patient") return s[key];
      if (key.indexOf("label:") === 0) return s.labels[key.slice(6)];
      var p = s.runs[key.slice(4)];
      if (!p) return null;
      return p.risk !== undefined ? p.risk : p.p_pos;
    }
    function draw() {
      var vis = runs.filter(runVisible);
      var q = document.getElementById("filter").value.toLowerCase();
      var thead = document.querySelector("#slides thead"), tbody = document.querySelector("#slides tbody");
      thead.innerHTML = ""; tbody.innerHTML = "";
      var cols = [["slide", "slide"], ["patient", "patient"]].concat(labelKeys.map(function (k) { return ["label:" + k, k]; }))
        .concat([["wrong", "wrong"]]).concat(vis.map(function (r) { return ["run:" + r.name, r.name]; }));
      var tr = el("tr");
      cols.forEach(function (c) {
        var th = el("th", { text: c[1], title: "sort by " + c[1] });
        th.onclick = function () { sortDir = sortKey === c[0] ? -sortDir : 1; sortKey = c[0]; draw(); };
        tr.appendChild(th);
      });
      thead.appendChild(tr);
      var rows = slides.map(function (s) {
        var wrong = vis.filter(function (r) { return s.runs[r.name] && s.runs[r.name].correct === false; }).length;
        return { s: s, wrong: wrong };
      }).filter(function (o) {
        if (!q) return true;
        var hay = [o.s.slide, o.s.patient].concat(Object.keys(o.s.labels).map(function (k) { return String(o.s.labels[k]); }));
        return hay.join(" ").toLowerCase().indexOf(q) >= 0;
      });
      rows.sort(function (a, b) {
        if (document.getElementById("wrongfirst").checked && a.wrong !== b.wrong) return b.wrong - a.wrong;
        if (sortKey) {
          var va = sortKey === "wrong" ? a.wrong : cellValue(a.s, sortKey), vb = sortKey === "wrong" ? b.wrong : cellValue(b.s, sortKey);
          if (va !== vb) return (va === null ? 1 : vb === null ? -1 : (va < vb ? -1 : 1)) * sortDir;
        }
        return a.s.slide < b.s.slide ? -1 : 1;
      });
      rows.forEach(function (o) {
        var s = o.s, tr = el("tr", { "data-slide": s.slide });
        tr.appendChild(el("td", {}, [el("a", { href: "slides/" + encodeURIComponent(s.slide) + ".html", text: s.slide })]));
        tr.appendChild(el("td", { text: s.patient }));
        labelKeys.forEach(function (k) { tr.appendChild(el("td", { text: s.labels[k] === undefined ? "" : fmt(s.labels[k], 2) })); });
        tr.appendChild(el("td", { text: String(o.wrong), "class": o.wrong ? "bad" : "" }));
        vis.forEach(function (r) {
          var p = s.runs[r.name];
          if (!p) { tr.appendChild(el("td", { text: "—" })); return; }
          if (p.risk !== undefined) {
            tr.appendChild(el("td", { text: fmt(p.risk, 2), title: "fold " + p.fold + ", risk (higher = earlier event); time " + p.time + ", event " + p.event }));
          } else {
            tr.appendChild(el("td", { "class": p.correct ? "ok" : "bad", text: (p.correct ? "✓ " : "✗ ") + p.pred + " " + fmt(p.prob, 2),
              title: "fold " + p.fold + ": predicted " + p.pred + " (p=" + fmt(p.prob) + "), true " + p.label }));
          }
        });
        tbody.appendChild(tr);
      });
      document.getElementById("count").textContent = rows.length + " of " + slides.length + " slides, " + vis.length + " runs";
    }
    draw();
    var gl = document.querySelector("#galleries ul");
    ZF.galleries.forEach(function (g) { gl.appendChild(el("li", {}, [el("a", { href: g.url, text: g.run })])); });
    var ts = document.getElementById("tables");
    ZF.tables.forEach(function (t) {
      ts.appendChild(el("h3", { text: t.name }));
      ts.appendChild(t.kind === "image" ? el("img", { src: t.url, "class": "plot", alt: t.name }) : el("pre", { text: t.text }));
    });
    var gs = document.getElementById("generated");
    if (!ZF.generated.length) gs.appendChild(el("p", { text: "No generation outputs (generation.json) found next to this run." }));
    ZF.generated.forEach(function (g) {
      var box = el("div", { "class": "genrow" });
      box.appendChild(el("p", { text: g.name + ": " + JSON.stringify(g.meta) }));
      var row = el("div", { "class": "cards" });
      if (g.region) {
        row.appendChild(el("figure", {}, [el("img", { src: g.region.url, "class": "thumb" }),
          el("figcaption", {}, [el("a", { href: "slides/" + encodeURIComponent(g.region.slide) + ".html", text: "real region " + g.region.slide + " @" + g.region.x + "," + g.region.y })])]));
      } else {
        row.appendChild(el("figure", {}, [el("figcaption", { text: "conditioning region not recorded" })]));
      }
      g.images.forEach(function (u) { row.appendChild(el("figure", {}, [el("img", { src: u, "class": "thumb" }), el("figcaption", { text: "generated" })])); });
      box.appendChild(row); gs.appendChild(box);
    });
    document.body.setAttribute("data-ready", "1");
  }

  /* ------------------------------------------------------------------ cards */
  function card(sid, x, y, size, region, caption, withCrops, href) {
    var c = el("div", { "class": "card" });
    if (withCrops) {
      var ctx = el("div", { "class": "ctx" }, [el("img", { src: cropUrl(sid, region[0], region[1], region[2]), alt: "5x" })]);
      var f = 100 / region[2];
      ctx.appendChild(el("span", { "class": "box", style: "left:" + (x - region[0]) * f + "%;top:" + (y - region[1]) * f +
        "%;width:" + size * f + "%;height:" + size * f + "%" }));
      c.appendChild(el("div", { "class": "pair" }, [el("img", { src: cropUrl(sid, x, y, size), alt: "20x" }), ctx]));
    }
    c.appendChild(href ? el("a", { href: href, text: caption }) : el("div", { text: caption }));
    return c;
  }

  /* ------------------------------------------------------------------ slide */
  function instanceAt(run, X, Y) {
    for (var j = 0; j < run.x.length; j++) {
      if (run.x[j] <= X && X < run.x[j] + run.size && run.y[j] <= Y && Y < run.y[j] + run.size) return j;
    }
    return -1;
  }
  function slide() {
    var runs = ZF.runs.filter(function (r) { return r.heat; });
    var W = ZF.width, sid = ZF.slide;
    var info = ZF.info || {}, sum = document.getElementById("summary");
    var parts = [sid + (info.patient ? " (patient " + info.patient + ")" : "")];
    Object.keys(info.labels || {}).forEach(function (k) { parts.push(k + ": " + fmt(info.labels[k], 2)); });
    sum.appendChild(el("p", { text: parts.join(" · ") }));
    var ul = el("ul", { "class": "preds" });
    Object.keys(info.runs || {}).forEach(function (n) {
      var p = info.runs[n];
      ul.appendChild(el("li", { "class": p.correct === false ? "bad" : p.correct ? "ok" : "", text: n + ": fold " + p.fold + ", " +
        (p.risk !== undefined ? "risk " + fmt(p.risk, 2) : "predicted " + p.pred + " (p=" + fmt(p.prob, 2) + "), true " + p.label) }));
    });
    var names = Object.keys(info.runs || {});
    var nWrong = names.filter(function (n) { return info.runs[n].correct === false; }).length;
    var det = el("details", {}, [el("summary", { text: "out-of-fold predictions of " + names.length + " runs (" + nWrong + " wrong)" }), ul]);
    if (names.length <= 6) det.setAttribute("open", "");
    sum.appendChild(det);
    ["runA", "runB"].forEach(function (id, k) {
      var sel = document.getElementById(id);
      runs.forEach(function (r, i) { sel.appendChild(el("option", { value: String(i), text: r.name })); });
      if (runs.length > 1 && k === 1) sel.value = "1";
    });
    var params = new URLSearchParams(location.search);
    [["run", "runA"], ["runB", "runB"]].forEach(function (pr) {  /* ?run=NAME&runB=NAME (or positions) */
      var want = params.get(pr[0]);
      if (want === null) return;
      var byName = runs.map(function (r) { return r.name; }).indexOf(want);
      document.getElementById(pr[1]).value = String(byName >= 0 ? byName : +want);
    });
    ["tissue", "grid", "regions", "heat"].forEach(function (k) {
      if (params.get(k) !== null) document.getElementById("ov-" + k).checked = params.get(k) === "1";
    });
    var opacity = document.getElementById("opacity");
    var views = {};

    function source() {
      if (ZF.dzi) {
        var d = JSON.parse(JSON.stringify(ZF.dzi));
        d.Image.Url = base + "dz/" + encodeURIComponent(sid) + "_files/";
        return d;
      }
      return { type: "image", url: base + "overlay/" + encodeURIComponent(sid) + "/tissue.png" };
    }
    function makeView(id, runSel) {
      var v = OpenSeadragon({ id: id, prefixUrl: base + "static/openseadragon/images/", tileSources: source(),
        drawer: "canvas", imageSmoothingEnabled: false, showNavigator: id === "osdA", animationTime: 0.3,
        gestureSettingsMouse: { clickToZoom: false }, maxZoomPixelRatio: 4, visibilityRatio: 0.5 });
      var layers = {}, state = { opened: false, waiting: {} };
      function add(name, url, op) {
        state.waiting[name] = true;
        v.addTiledImage({ tileSource: { type: "image", url: url }, x: 0, y: 0, width: 1, opacity: op,
          success: function (e) {
            if (layers[name]) v.world.removeItem(layers[name]);
            layers[name] = e.item; delete state.waiting[name];
          },
          error: function () { delete state.waiting[name]; } });
      }
      function heat() {
        var r = runs[+document.getElementById(runSel).value];
        if (layers.heat) { v.world.removeItem(layers.heat); layers.heat = null; }
        if (r) add("heat", base + r.heat.slice(3), document.getElementById("ov-heat").checked ? +opacity.value : 0);
      }
      v.addOnceHandler("open", function () {
        state.opened = true;
        ["tissue", "grid", "regions"].forEach(function (k) {
          add(k, base + ZF.overlays[k].slice(3), document.getElementById("ov-" + k).checked ? 1 : 0);
        });
        heat();
      });
      function ready() {
        if (!state.opened || Object.keys(state.waiting).length) return false;
        for (var i = 0; i < v.world.getItemCount(); i++) {
          var it = v.world.getItemAt(i);  /* hidden layers (opacity 0) are never drawn, never "fully loaded" */
          if (it.getOpacity() > 0 && !it.getFullyLoaded()) return false;
        }
        return true;
      }
      return { v: v, layers: layers, heat: heat, runSel: runSel, ready: ready };
    }
    views.A = makeView("osdA", "runA");
    function toggles() {
      Object.keys(views).forEach(function (k) {
        var L = views[k].layers;
        ["tissue", "grid", "regions"].forEach(function (n) { if (L[n]) L[n].setOpacity(document.getElementById("ov-" + n).checked ? 1 : 0); });
        if (L.heat) L.heat.setOpacity(document.getElementById("ov-heat").checked ? +opacity.value : 0);
      });
    }
    ["tissue", "grid", "regions", "heat"].forEach(function (k) { document.getElementById("ov-" + k).onchange = toggles; });
    opacity.oninput = toggles;
    document.getElementById("runA").onchange = function () { views.A.heat(); gallery(); };
    document.getElementById("runB").onchange = function () { if (views.B) views.B.heat(); };
    var syncing = false;
    function sync(from, to) {
      from.v.addHandler("viewport-change", function () {
        if (syncing || !to.v.viewport) return;
        syncing = true;
        to.v.viewport.zoomTo(from.v.viewport.getZoom(), null, true);
        to.v.viewport.panTo(from.v.viewport.getCenter(), true);
        syncing = false;
      });
    }
    document.getElementById("sbs").onchange = function () {
      var on = this.checked, b = document.getElementById("osdB");
      b.hidden = !on;
      document.getElementById("views").className = on ? "two" : "";
      if (on && !views.B) { views.B = makeView("osdB", "runB"); sync(views.A, views.B); sync(views.B, views.A); }
    };
    if (params.get("sbs") === "1") { document.getElementById("sbs").checked = true; document.getElementById("sbs").onchange(); }

    function toLevel0(viewer, pos) {
      var vp = viewer.viewport.pointFromPixel(pos);
      return { X: vp.x * W, Y: vp.y * W };
    }
    function showTile(X, Y) {
      var panel = document.getElementById("clicked"), g = ZF.grid;
      panel.innerHTML = "";
      var t = -1;
      if (g) for (var i = 0; i < g.x.length; i++) if (g.x[i] <= X && X < g.x[i] + g.size && g.y[i] <= Y && Y < g.y[i] + g.size) { t = i; break; }
      if (t < 0) { panel.appendChild(el("em", { text: "No 20x tile at (" + Math.round(X) + ", " + Math.round(Y) + ")." })); return; }
      var x = g.x[t], y = g.y[t], reg = [g.px[t], g.py[t], g.ps[t]];
      var lines = runs.map(function (r) {
        var j = instanceAt(r, x + g.size / 2, y + g.size / 2);
        return el("li", { text: r.name + ": " + (j < 0 ? "not in bag" : "#" + r.order[j] + " of " + r.x.length +
          " (rank " + fmt(r.rank[j], 3) + ", attention " + r.score[j].toExponential(2) + ")") });
      });
      panel.appendChild(card(sid, x, y, g.size, reg, "tile (" + x + ", " + y + "), 5x region (" + reg[0] + ", " + reg[1] + ")", ZF.crops));
      panel.appendChild(el("ul", { "class": "ranks" }, lines));
    }
    function clickHandler(view) {
      view.v.addHandler("canvas-click", function (e) {
        if (!e.quick) return;
        var p = toLevel0(view.v, e.position);
        showTile(p.X, p.Y);
      });
    }
    clickHandler(views.A);
    window.zfShowTile = showTile;
    window.zfViews = views;

    function gallery() {
      var box = document.querySelector("#gallery .cards"), r = runs[+document.getElementById("runA").value];
      box.innerHTML = "";
      if (!r) { box.appendChild(el("em", { text: "No attention for this slide (no bag or fold checkpoint found)." })); return; }
      var idx = r.score.map(function (_, j) { return j; }).sort(function (a, b) { return r.order[a] - r.order[b]; });
      var k = Math.min(ZF.k, Math.floor(idx.length / 2) || 1);
      [["top", idx.slice(0, k)], ["bottom", idx.slice(-k).reverse()]].forEach(function (grp) {
        box.appendChild(el("h3", { text: grp[0] + " " + k + " (" + r.name + ")" }));
        var row = el("div", { "class": "cards" });
        grp[1].forEach(function (j) {
          var reg = regionOf(r.x[j], r.y[j], r.size);
          var c = card(sid, r.x[j], r.y[j], r.size, reg, "#" + r.order[j] + " rank " + fmt(r.rank[j], 3), ZF.crops);
          c.onclick = function () {
            views.A.v.viewport.fitBounds(new OpenSeadragon.Rect(reg[0] / W, reg[1] / W, reg[2] / W, reg[2] / W));
            showTile(r.x[j] + r.size / 2, r.y[j] + r.size / 2);
          };
          row.appendChild(c);
        });
        box.appendChild(row);
      });
    }
    function regionOf(x, y, size) {
      var g = ZF.grid;
      if (g) for (var i = 0; i < g.x.length; i++) if (g.x[i] <= x && x < g.x[i] + g.size && g.y[i] <= y && y < g.y[i] + g.size) {
        if (g.ps[i] >= size) return [g.px[i], g.py[i], g.ps[i]];
      }
      var s5 = Math.max(4 * (g ? g.size : size), size);
      return [Math.floor(x / s5) * s5, Math.floor(y / s5) * s5, s5];
    }
    gallery();
    var timer = setInterval(function () {
      var all = Object.keys(views).every(function (k) { return views[k].ready(); });
      if (!all) return;
      clearInterval(timer);
      document.body.setAttribute("data-ready", "1");
    }, 200);
  }

  /* ------------------------------------------------------------------ gallery page */
  function galleryPage() {
    var r = ZF.run;
    document.getElementById("about").textContent = r.name + " (" + r.model + ", " + r.encoder + ", " + r.target +
      "): the " + ZF.k + " most and least attended instances over all slides of each true class (rank within slide, then attention).";
    var root = document.getElementById("classes");
    Object.keys(ZF.classes).forEach(function (cls) {
      var c = ZF.classes[cls];
      root.appendChild(el("h2", { text: "class " + cls + " (" + c.n_slides + " slides)" }));
      ["top", "bottom"].forEach(function (grp) {
        root.appendChild(el("h3", { text: grp }));
        var row = el("div", { "class": "cards" });
        c[grp].forEach(function (t) {
          row.appendChild(card(t.slide, t.x, t.y, t.size, t.region, t.slide + " rank " + fmt(t.rank, 3), t.crops,
            base + "slides/" + encodeURIComponent(t.slide) + ".html"));
        });
        root.appendChild(row);
      });
    });
    document.body.setAttribute("data-ready", "1");
  }

  if (ZF.kind === "index") index();
  else if (ZF.kind === "slide") slide();
  else if (ZF.kind === "gallery") galleryPage();
})();
