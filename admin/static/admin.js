// Charts drawn from the tables beside them (no inline scripts: the Content-Security-Policy forbids them).
(function () {
  "use strict";
  var colours = ["#a5142a", "#1f6fb2", "#2f8f4e", "#d08a00", "#6b4fa0", "#5d6b7a"];
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var table = document.getElementById(canvas.dataset.table);
    if (!table || typeof Chart === "undefined") { return; }
    var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) { return th.textContent; });
    var rows = Array.prototype.slice.call(table.querySelectorAll("tbody tr"));
    var labels = rows.map(function (tr) { return tr.cells[0].textContent; });
    // Columns whose cells carry a data-value are plotted; others (an amount in yuan beside points) are not.
    var datasets = [];
    heads.slice(1).forEach(function (head, i) {
      if (!rows.length || rows[0].cells[i + 1].dataset.value === undefined) { return; }
      datasets.push({
        label: head,
        data: rows.map(function (tr) { return Number(tr.cells[i + 1].dataset.value || 0); }),
        backgroundColor: colours[datasets.length % colours.length],
        borderColor: colours[datasets.length % colours.length],
        fill: false
      });
    });
    new Chart(canvas, {
      type: canvas.dataset.chart,
      data: { labels: labels, datasets: datasets },
      options: { animation: false, responsive: true, maintainAspectRatio: false }
    });
  });
})();

// The draft editor checks the document as it is typed and names each fault by its JSON path.
(function () {
  "use strict";
  var token = document.querySelector("input[name=csrf_token]");
  document.querySelectorAll("textarea[data-check]").forEach(function (area) {
    var out = area.parentNode.querySelector(".check");
    var timer = null;
    function check() {
      var body = new URLSearchParams();
      body.set("document", area.value);
      fetch(area.dataset.check, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": token ? token.value : "" },
        body: body
      }).then(function (r) { return r.json(); }).then(function (answer) {
        out.className = "check " + (answer.valid ? "ok" : "error");
        out.textContent = answer.valid ? "✓ " + answer.version + " (" + answer.rules + ")" : answer.path + ": " + answer.message;
      });
    }
    area.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(check, 400); });
  });
})();
