"""The review page: one static HTML file (styles and script inline) reading ``items.js`` beside it.

It works from the file system (no server, no fetch): ``items.js`` sets ``window.SAP_REVIEW`` to
``{"title", "items": [...], "signals": [...], "classes": [...], "page_size"}``. Only the current
page of thumbnails is in the document (``loading="lazy"`` images), so 10,000 annotations cost one
JSON parse and a filter pass per change. Every item is a ``div.item`` with ``data-ann-id``.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sap review queue</title>
<style>
  body { font: 13px/1.35 system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #ddd; }
  header { position: sticky; top: 0; background: #2b2b2b; padding: 8px 12px; display: flex; flex-wrap: wrap;
           gap: 10px; align-items: center; border-bottom: 1px solid #444; z-index: 1; }
  header h1 { font-size: 15px; margin: 0 8px 0 0; }
  select, input, button { background: #1e1e1e; color: #ddd; border: 1px solid #555; padding: 2px 4px; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 8px; padding: 10px; }
  .item { background: #2b2b2b; border: 1px solid #3a3a3a; border-radius: 4px; padding: 4px; }
  .item.done { opacity: 0.55; border-color: #3c6e3c; }
  .item img { width: 100%; height: 180px; object-fit: contain; background: #111; display: block; }
  .cap { margin-top: 3px; word-break: break-word; }
  .risk { font-weight: 600; }
  .legend span { margin-right: 10px; }
  a { color: #8cc8ff; }
</style>
</head>
<body>
<header>
  <h1 id="title">sap review queue</h1>
  <label>class <select id="f-class"><option value="">all</option></select></label>
  <label>signal <select id="f-signal"><option value="">any</option></select></label>
  <label>&ge; <input id="f-min" type="number" min="0" max="1" step="0.05" value="0.5" size="4"></label>
  <label>status <select id="f-status"><option value="">all</option><option value="todo">to do</option>
    <option value="done">done</option></select></label>
  <button id="prev" title="previous page">&lsaquo;</button><span id="page"></span>
  <button id="next" title="next page">&rsaquo;</button>
  <span><span id="count">0</span> items</span>
  <span class="legend"><span>fill: chosen mask</span><span style="color:#ff4fd8">outline: runner-up</span>
    <span>dot: the click</span></span>
</header>
<main id="grid"></main>
<script src="items.js"></script>
<script>
(function () {
  "use strict";
  var data = window.SAP_REVIEW || {items: [], signals: [], classes: [], page_size: 120};
  var items = data.items, pageSize = data.page_size || 120, page = 0, shown = items;
  var $ = function (id) { return document.getElementById(id); };
  $("title").textContent = data.title || "sap review queue";
  function option(sel, value, text) {
    var o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o);
  }
  data.classes.forEach(function (c) { option($("f-class"), c, c); });
  data.signals.forEach(function (s) { option($("f-signal"), s, s); });
  function filter() {
    var cls = $("f-class").value, sig = $("f-signal").value, status = $("f-status").value;
    var min = parseFloat($("f-min").value); if (isNaN(min)) { min = 0; }
    shown = items.filter(function (it) {
      if (cls && it.category !== cls) { return false; }
      if (status === "todo" && it.done) { return false; }
      if (status === "done" && !it.done) { return false; }
      if (sig && !(sig in it.signals && it.signals[sig] >= min)) { return false; }
      return true;
    });
    page = 0; render();
  }
  function caption(it) {
    var d = document.createElement("div"); d.className = "cap";
    var r = document.createElement("span"); r.className = "risk";
    r.textContent = "#" + it.rank + (it.done ? " done" : " risk " + it.risk.toFixed(3));
    d.appendChild(r);
    d.appendChild(document.createTextNode(" \u00b7 id " + it.id + " \u00b7 " + it.category));
    d.appendChild(document.createElement("br"));
    var why = it.top ? it.top + " " + it.signals[it.top].toFixed(2) : "no signal";
    if ("gt_iou" in it) { why += " \u00b7 IoU vs truth " + it.gt_iou.toFixed(2); }
    d.appendChild(document.createTextNode(why + " \u00b7 "));
    var a = document.createElement("a"); a.href = it.image_href; a.target = "_blank";
    a.textContent = it.file_name; d.appendChild(a);
    return d;
  }
  function render() {
    var grid = $("grid"), pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    var frag = document.createDocumentFragment();
    shown.slice(page * pageSize, (page + 1) * pageSize).forEach(function (it) {
      var div = document.createElement("div");
      div.className = "item" + (it.done ? " done" : "");
      div.setAttribute("data-ann-id", String(it.id));
      div.title = Object.keys(it.signals).map(function (k) { return k + " " + it.signals[k]; }).join("\n");
      var a = document.createElement("a"); a.href = it.image_href; a.target = "_blank";
      if (it.thumb) {
        var img = document.createElement("img"); img.loading = "lazy"; img.src = it.thumb; img.alt = "";
        a.appendChild(img);
      }
      div.appendChild(a); div.appendChild(caption(it)); frag.appendChild(div);
    });
    grid.replaceChildren(frag);
    $("count").textContent = String(shown.length);
    $("page").textContent = " page " + (page + 1) + " / " + pages + " ";
  }
  ["f-class", "f-signal", "f-min", "f-status"].forEach(function (id) { $(id).addEventListener("change", filter); });
  $("prev").addEventListener("click", function () { page -= 1; render(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", function () { page += 1; render(); window.scrollTo(0, 0); });
  render();
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"""
