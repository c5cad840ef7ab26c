// The run report's grid: rows from the "rows" data island, filtered, sorted, a page at a time.
// Every text goes in through textContent and every link through setAttribute, so nothing a
// file name holds is ever parsed as HTML.
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("rows").textContent);
  var rows = data.rows;
  var pageRows = data.pageRows;
  var filter = document.getElementById("filter");
  var minScore = document.getElementById("min-score");
  var sort = document.getElementById("sort");
  var grid = document.getElementById("grid");
  var count = document.getElementById("count");
  var pageLabel = document.getElementById("page");
  var prev = document.getElementById("prev");
  var next = document.getElementById("next");
  var current = 0;

  rows.forEach(function (row, i) {
    row.order = i;
    row.labels = row.maps.map(function (m) { return m.label; }).join(" ").toLowerCase();
    row.first = row.maps.length ? row.maps[0].label.toLowerCase() : "";
  });

  function element(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function picture(cell, alt) {
    var figure = element("figure");
    if (cell.src) {
      var img = element("img");
      img.setAttribute("src", cell.src);
      img.setAttribute("alt", alt);
      img.setAttribute("width", cell.w);
      img.setAttribute("height", cell.h);
      img.setAttribute("loading", "lazy");
      if (cell.href) {
        var link = element("a");
        link.setAttribute("href", cell.href);
        link.appendChild(img);
        figure.appendChild(link);
      } else {
        figure.appendChild(img);
      }
    } else {
      var note = element("div", "missing", cell.note);
      if (cell.href) {
        var file = element("a", null, "file");
        file.setAttribute("href", cell.href);
        note.appendChild(element("br"));
        note.appendChild(file);
      }
      figure.appendChild(note);
    }
    return figure;
  }

  // A video's cell: the overlay video itself, and its target's score over time as a line.
  function clip(cell, alt) {
    var figure = element("figure", "video");
    if (cell.video) {
      var video = element("video");
      video.setAttribute("src", cell.video);
      video.setAttribute("controls", "");
      video.setAttribute("muted", "");
      video.setAttribute("preload", "metadata");
      video.setAttribute("title", alt);
      var wide = Math.min(320, cell.vw || 320);
      video.setAttribute("width", wide);
      if (cell.vw && cell.vh) video.setAttribute("height", Math.round(wide * cell.vh / cell.vw));
      figure.appendChild(video);
    } else {
      figure.appendChild(element("div", "missing", "video not found"));
    }
    figure.appendChild(plot(cell.series || [], cell.duration || 0));
    return figure;
  }

  function plot(series, duration) {
    var ns = "http://www.w3.org/2000/svg";
    var width = 320, height = 80;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "plot");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height + 14);
    svg.setAttribute("viewBox", "0 0 " + width + " " + (height + 14));
    var frame = document.createElementNS(ns, "rect");
    frame.setAttribute("width", width);
    frame.setAttribute("height", height);
    frame.setAttribute("fill", "none");
    frame.setAttribute("stroke", "#ccc");
    svg.appendChild(frame);
    var span = duration > 0 ? duration : 1;
    var points = series.map(function (p) {
      return (p[0] / span * width).toFixed(1) + "," + ((1 - p[1]) * height).toFixed(1);
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#c00");
    svg.appendChild(line);
    var axis = document.createElementNS(ns, "text");
    axis.setAttribute("x", 0);
    axis.setAttribute("y", height + 12);
    axis.setAttribute("font-size", 10);
    axis.textContent = "score over " + span.toFixed(1) + " s (0 to 1)";
    svg.appendChild(axis);
    return svg;
  }

  function score(value) {
    return typeof value === "number" ? value.toFixed(3) : "-";
  }

  function render(row) {
    var line = element("div", "row");
    line.appendChild(element("div", "name", row.name));
    var strip = element("div", "strip");
    var original = picture(row.original, row.name);
    original.appendChild(element("figcaption", null, "original"));
    strip.appendChild(original);
    row.maps.forEach(function (cell) {
      var alt = cell.target + " " + cell.label;
      var figure = cell.series ? clip(cell, alt) : picture(cell, alt);
      var caption = element("figcaption");
      caption.appendChild(element("span", "target", cell.target + " "));
      caption.appendChild(element("span", "label", cell.label));
      caption.appendChild(element("span", "score", " " + score(cell.score)));
      if (cell.warning) caption.appendChild(element("div", "warning", cell.warning));
      figure.appendChild(caption);
      strip.appendChild(figure);
    });
    line.appendChild(strip);
    return line;
  }

  function selected() {
    var words = filter.value.trim().toLowerCase();
    var least = parseFloat(minScore.value);
    if (isNaN(least)) least = 0;
    var kept = rows.filter(function (row) {
      if (words && row.labels.indexOf(words) < 0 && row.name.toLowerCase().indexOf(words) < 0) {
        return false;
      }
      return least <= 0 || (typeof row.score === "number" && row.score >= least);
    });
    var by = sort.value;
    kept.sort(function (a, b) {
      if (by === "score-desc") return (b.score || 0) - (a.score || 0) || a.order - b.order;
      if (by === "score-asc") return (a.score || 0) - (b.score || 0) || a.order - b.order;
      if (by === "label") {
        return a.first < b.first ? -1 : a.first > b.first ? 1 : a.order - b.order;
      }
      return a.order - b.order;
    });
    return kept;
  }

  function show() {
    var kept = selected();
    var pages = Math.max(1, Math.ceil(kept.length / pageRows));
    current = Math.min(current, pages - 1);
    var start = current * pageRows;
    grid.textContent = "";
    var fragment = document.createDocumentFragment();
    kept.slice(start, start + pageRows).forEach(function (row) {
      fragment.appendChild(render(row));
    });
    grid.appendChild(fragment);
    count.textContent = kept.length + " of " + rows.length + " inputs";
    pageLabel.textContent = "page " + (current + 1) + " of " + pages;
    prev.disabled = current === 0;
    next.disabled = current >= pages - 1;
  }

  function restart() {
    current = 0;
    show();
  }

  filter.addEventListener("input", restart);
  minScore.addEventListener("input", restart);
  sort.addEventListener("change", restart);
  prev.addEventListener("click", function () { current -= 1; show(); window.scrollTo(0, grid.offsetTop); });
  next.addEventListener("click", function () { current += 1; show(); window.scrollTo(0, grid.offsetTop); });
  show();
})();
