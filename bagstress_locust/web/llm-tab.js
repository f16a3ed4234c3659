// bagstress-locust: the LLM charts under the LLM tab's table in Locust's web UI.
//
// Locust renders an extended tab as a table only. This script (added to the UI's page by
// bagstress_locust/webui.py) puts a panel under that table while the LLM tab is open and fills it
// every 2 s with the SVG charts the server draws (./bagstress/llm/charts). Nothing else on the page
// is touched; if Locust's markup changes, the tab keeps its table and only the charts go missing.
(function () {
  "use strict";

  var PANEL_ID = "bagstress-llm-charts";
  var REFRESH_MS = 2000;

  function llmTabOpen() {
    return new URLSearchParams(window.location.search).get("tab") === "llm";
  }

  // The LLM tab's table: the one whose header has a "TTFT p50" column.
  function llmTable() {
    var headers = document.querySelectorAll("table th");
    for (var i = 0; i < headers.length; i++) {
      if (headers[i].textContent.indexOf("TTFT p50") === 0) {
        var table = headers[i].closest("table");
        return table.closest(".MuiTableContainer-root") || table;
      }
    }
    return null;
  }

  function refresh() {
    if (!document.getElementById(PANEL_ID) || document.hidden) {
      return;
    }
    fetch("./bagstress/llm/charts", { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : Promise.reject(response.status);
      })
      .then(function (html) {
        var panel = document.getElementById(PANEL_ID);
        if (panel) {
          panel.innerHTML = html;
        }
      })
      .catch(function () {
        // The next refresh tries again; the table above keeps updating on its own.
      });
  }

  function place() {
    var panel = document.getElementById(PANEL_ID);
    var table = llmTabOpen() ? llmTable() : null;
    if (!table) {
      if (panel) {
        panel.remove();
      }
      return;
    }
    if (panel && panel.previousElementSibling === table) {
      return;
    }
    if (!panel) {
      panel = document.createElement("div");
      panel.id = PANEL_ID;
      panel.setAttribute("aria-label", "LLM charts");
    }
    table.after(panel);
    refresh();
  }

  new MutationObserver(place).observe(document.body, { childList: true, subtree: true });
  window.setInterval(refresh, REFRESH_MS);
  place();
})();
