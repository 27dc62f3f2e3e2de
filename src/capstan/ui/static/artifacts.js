/* The artifact browser of a run page: folders through the artifact list API, previews of text, images and CSV
 * tables through the download API (same origin, the session cookie or no auth). Everything shown is set as text
 * or as an <img> source: a file's content is never parsed as HTML. */
(function () {
  "use strict";
  var MAX_PREVIEW_BYTES = 2 * 1024 * 1024;
  var MAX_TABLE_ROWS = 200;
  var IMAGE = /\.(png|jpe?g|gif|webp|svg|bmp)$/i;
  var TABLE = /\.(csv|tsv)$/i;
  var TEXT = /(\.(txt|log|json|jsonl|ya?ml|md|py|toml|cfg|ini|conf|sh|html?|xml|r|sql|ipynb|out|err)$)|(^|\/)(MLmodel|requirements\.txt|conda\.yaml|python_env\.yaml|[^.\/]+)$/i;

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = text; }
    if (cls) { node.className = cls; }
    return node;
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) { return ""; }
    var units = ["B", "KB", "MB", "GB"], i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i === 0 ? bytes : bytes.toFixed(1)) + " " + units[i];
  }

  function parseDelimited(text, sep) {
    var rows = [], row = [], field = "", quoted = false;
    for (var i = 0; i < text.length && rows.length <= MAX_TABLE_ROWS; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (c === '"') { quoted = false; }
        else { field += c; }
      } else if (c === '"') { quoted = true; }
      else if (c === sep) { row.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") { i++; }
        row.push(field); rows.push(row); row = []; field = "";
      } else { field += c; }
    }
    if (field !== "" || row.length) { row.push(field); rows.push(row); }
    return rows;
  }

  function Browser(root) {
    this.listUrl = root.getAttribute("data-list-url");
    this.fileUrl = root.getAttribute("data-file-url");
    this.tree = root.querySelector(".artifact-tree");
    this.preview = root.querySelector(".artifact-preview");
  }

  Browser.prototype.fileHref = function (path) {
    return this.fileUrl + path.split("/").map(encodeURIComponent).join("/");
  };

  Browser.prototype.open = function (folder) {
    var self = this;
    var url = this.listUrl + (folder ? "?path=" + encodeURIComponent(folder) : "");
    window.capstan.api("GET", url).then(function (body) {
      self.showFolder(folder, body.files || []);
    }).catch(function (error) {
      self.tree.replaceChildren(el("p", error.message, "error"));
    });
  };

  Browser.prototype.showFolder = function (folder, files) {
    var self = this;
    var box = document.createDocumentFragment();
    var crumbs = el("p", null, "artifact-path");
    var up = el("a", "artifacts");
    up.href = "#";
    up.addEventListener("click", function (e) { e.preventDefault(); self.open(""); });
    crumbs.appendChild(up);
    if (folder) { crumbs.appendChild(document.createTextNode(" / " + folder)); }
    box.appendChild(crumbs);
    if (!files.length) { box.appendChild(el("p", "No artifacts.", "empty")); }
    var list = el("ul", null, "artifact-list");
    files.slice().sort(function (a, b) {
      return (b.is_dir - a.is_dir) || a.path.localeCompare(b.path);
    }).forEach(function (item) {
      var li = el("li", null, item.is_dir ? "dir" : "file");
      var link = el("a", item.path.split("/").pop() + (item.is_dir ? "/" : ""));
      link.href = item.is_dir ? "#" : self.fileHref(item.path);
      link.setAttribute("data-path", item.path);
      link.addEventListener("click", function (e) {
        e.preventDefault();
        if (item.is_dir) { self.open(item.path); } else { self.show(item); }
      });
      li.appendChild(link);
      if (!item.is_dir) { li.appendChild(el("span", " " + size(item.size), "hint")); }
      list.appendChild(li);
    });
    box.appendChild(list);
    this.tree.replaceChildren(box);
  };

  Browser.prototype.show = function (item) {
    var self = this, href = this.fileHref(item.path);
    var head = el("p", null, "preview-head");
    head.appendChild(el("strong", item.path));
    var download = el("a", "download");
    download.href = href;
    download.setAttribute("download", item.path.split("/").pop());
    head.appendChild(document.createTextNode(" · " + size(item.size) + " · "));
    head.appendChild(download);
    var body = el("div", null, "preview-body");
    this.preview.replaceChildren(head, body);
    if (IMAGE.test(item.path)) {
      var img = el("img");
      img.alt = item.path;
      img.src = href;
      body.appendChild(img);
      return;
    }
    var tabular = TABLE.test(item.path);
    if (!tabular && !TEXT.test(item.path)) {
      body.appendChild(el("p", "No preview for this kind of file.", "hint"));
      return;
    }
    if (item.size > MAX_PREVIEW_BYTES) {
      body.appendChild(el("p", "Too large to preview (" + size(item.size) + "); download it instead.", "hint"));
      return;
    }
    fetch(href, { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) { throw new Error(response.status + " " + response.statusText); }
      return response.text();
    }).then(function (text) {
      if (tabular) { self.table(body, text, /\.tsv$/i.test(item.path) ? "\t" : ","); }
      else { body.appendChild(el("pre", text, "text-preview")); }
    }).catch(function (error) { body.appendChild(el("p", error.message, "error")); });
  };

  Browser.prototype.table = function (body, text, sep) {
    var rows = parseDelimited(text, sep);
    var wrap = el("div", null, "table-wrap");
    var table = el("table", null, "data sticky-first csv-preview");
    rows.slice(0, MAX_TABLE_ROWS + 1).forEach(function (row, index) {
      var tr = el("tr");
      row.forEach(function (cell) { tr.appendChild(el(index === 0 ? "th" : "td", cell)); });
      (index === 0 ? table.createTHead() : (table.tBodies[0] || table.createTBody())).appendChild(tr);
    });
    wrap.appendChild(table);
    body.appendChild(wrap);
    if (rows.length > MAX_TABLE_ROWS) {
      body.appendChild(el("p", "Showing the first " + MAX_TABLE_ROWS + " rows.", "hint"));
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".artifact-browser").forEach(function (root) { new Browser(root).open(""); });
  });
})();
