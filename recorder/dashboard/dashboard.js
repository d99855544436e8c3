// Tollgate's usage dashboard. Reads the recorder's usage API relative to this
// page (api/usage, api/quotas, api/checkpoint) with the token given in the
// URL's fragment (#token=...), which never leaves the browser: the fragment is
// not sent to servers, and the page drops it from the address bar at once.
// Every text from the API goes into the page as text, never as HTML.
"use strict";

(function () {
  const MAX_PAGES = 50; // 50 pages of 10 000 rows
  const TOP_SERIES = 8;
  const COLORS = ["#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#0b7285", "#e67700", "#5c940d", "#868e96"];

  let session = readSession();
  const state = { charts: [], loads: 0 };
  window.tollgateDashboard = state;

  function readSession() {
    const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    // A fragment with a token is a whole new session: its namespace, or none.
    const token = fragment.get("token");
    if (token) {
      sessionStorage.setItem("tollgate-token", token);
      const ns = fragment.get("namespace");
      if (ns) {
        sessionStorage.setItem("tollgate-namespace", ns);
      } else {
        sessionStorage.removeItem("tollgate-namespace");
      }
    }
    if (window.location.hash) {
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return {
      token: sessionStorage.getItem("tollgate-token") || "",
      namespace: sessionStorage.getItem("tollgate-namespace") || "",
    };
  }

  class ApiError extends Error {}

  async function getJson(path, params) {
    const query = new URLSearchParams(params);
    if (session.namespace) {
      query.set("namespace", session.namespace);
    }
    const headers = { Accept: "application/json" };
    if (session.token) {
      headers.Authorization = "Bearer " + session.token;
    }
    const response = await fetch("api/" + path + "?" + query.toString(), { headers, cache: "no-store" });
    const text = await response.text();
    if (!response.ok) {
      let detail = text;
      try {
        const problem = JSON.parse(text);
        detail = problem.detail || problem.title || text;
      } catch (_) { /* not a problem document */ }
      throw new ApiError(response.status + ": " + detail);
    }
    return JSON.parse(text);
  }

  // Every page of a usage query: the first page's totals, warnings and
  // freshness, and all rows.
  async function usage(params) {
    const first = await getJson("usage", params);
    const rows = first.rows.slice();
    let cursor = first.next_cursor;
    for (let page = 1; cursor && page < MAX_PAGES; page++) {
      const next = await getJson("usage", Object.assign({}, params, { cursor }));
      rows.push(...next.rows);
      cursor = next.next_cursor;
    }
    first.rows = rows;
    first.truncated = Boolean(cursor);
    return first;
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (cls) {
      node.className = cls;
    }
    return node;
  }

  function dollars(micro) {
    const whole = Math.floor(micro / 1e6);
    const frac = String(micro % 1e6).padStart(6, "0");
    return "$" + whole.toLocaleString("en-US") + "." + frac;
  }

  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  function when(rfc3339) {
    if (!rfc3339) {
      return "–";
    }
    const d = new Date(rfc3339);
    return d.toISOString().replace("T", " ").replace(/:\d\d\.\d+Z$/, " UTC");
  }

  function ago(rfc3339, now) {
    const secs = Math.max(0, Math.round((now - new Date(rfc3339)) / 1000));
    if (secs < 120) return secs + " s ago";
    if (secs < 7200) return Math.round(secs / 60) + " min ago";
    if (secs < 172800) return Math.round(secs / 3600) + " h ago";
    return Math.round(secs / 86400) + " days ago";
  }

  function fillTable(id, rows, columns, emptyText) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = el("tr");
      const td = el("td", emptyText, "empty");
      td.colSpan = columns;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const cells of rows) {
      const tr = el("tr");
      for (const cell of cells) {
        tr.append(cell instanceof Node ? cell : el("td", cell));
      }
      body.append(tr);
    }
  }

  function numCell(text) {
    return el("td", text, "num");
  }

  // Bucketed rows to uPlot's columns: x = every bucket of the range, one
  // series per group value (the largest TOP_SERIES by `metric`, the rest
  // summed as "other").
  function series(report, key, metric, bucketSecs, scale) {
    const since = Math.floor(new Date(report.since) / 1000 / bucketSecs) * bucketSecs;
    const until = new Date(report.until) / 1000;
    const xs = [];
    for (let t = since; t < until; t += bucketSecs) {
      xs.push(t);
    }
    const totals = new Map();
    for (const row of report.rows) {
      const name = row[key] || "(none)";
      totals.set(name, (totals.get(name) || 0) + metric(row));
    }
    const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map((e) => e[0]);
    const shown = ranked.slice(0, TOP_SERIES);
    const names = ranked.length > TOP_SERIES ? shown.concat(["other"]) : shown;
    const index = new Map(xs.map((x, i) => [x, i]));
    const columns = names.map(() => xs.map(() => 0));
    for (const row of report.rows) {
      const x = Math.floor(new Date(row.bucket_start) / 1000);
      const i = index.get(x);
      if (i === undefined) continue;
      const name = row[key] || "(none)";
      let s = shown.indexOf(name);
      if (s < 0) s = names.length - 1;
      columns[s][i] += metric(row) * scale;
    }
    return { xs, names, columns };
  }

  // Axis labels with as many decimals as the largest value needs.
  function axisValues(dollarsAxis, data) {
    if (!dollarsAxis) {
      return (u, splits) => splits.map((v) => count(Math.round(v)));
    }
    const max = Math.max(0, ...data.columns.map((c) => Math.max(0, ...c)));
    const places = max >= 100 ? 0 : max >= 1 ? 2 : max >= 0.01 ? 4 : 6;
    return (u, splits) => splits.map((v) => "$" + v.toFixed(places));
  }

  function drawChart(id, data, valueLabel) {
    const target = document.getElementById(id);
    target.replaceChildren();
    if (data.names.length === 0) {
      target.append(el("p", "No receipts in this range yet.", "muted"));
      return null;
    }
    const opts = {
      width: Math.max(320, target.clientWidth || 900),
      height: 260,
      scales: { x: { time: true } },
      // Buckets are UTC hours and days; so are the axis and the legend.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      axes: [{}, { label: valueLabel, size: 90, values: axisValues(valueLabel === "USD", data) }],
      series: [{}].concat(data.names.map((name, i) => ({
        label: name,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        points: { show: data.xs.length <= 48 },
      }))),
    };
    const chart = new uPlot(opts, [data.xs].concat(data.columns), target);
    return { id, names: data.names, sums: data.columns.map((c) => c.reduce((a, b) => a + b, 0)), chart };
  }

  function showFreshness(report) {
    const f = report.freshness;
    const now = f ? new Date(f.answered_at) : new Date();
    const parts = ["as of " + when(now.toISOString())];
    if (f && f.newest_record_at) {
      parts.push("newest receipt " + ago(f.newest_record_at, now));
    } else {
      parts.push("no receipts yet in this range");
    }
    if (f) {
      parts.push(f.open_streams + " open stream" + (f.open_streams === 1 ? "" : "s"));
      if (f.quietest_open_stream_since) {
        parts.push("quietest open stream last shipped " + ago(f.quietest_open_stream_since, now));
      }
    }
    document.getElementById("freshness").textContent = parts.join(" · ");
  }

  function showCheckpoint(answer) {
    const target = document.getElementById("checkpoint");
    const c = answer.checkpoint;
    if (!c) {
      target.textContent = "no checkpoint yet: the first segment is sealed after the first receipts";
      return;
    }
    const verified = c.signature_verified === null
      ? "signed by an earlier recorder key; verify exports against its trust anchor"
      : c.signature_verified ? "signature verified" : "SIGNATURE DID NOT VERIFY";
    let text = "last checkpoint: log size " + count(c.size) + ", root " + c.root.slice(0, 16) + "…, signed " +
      when(c.issued_at) + " by " + c.key_id.slice(0, 23) + "… (" + verified + ")";
    if (c.sinks.length) {
      text += "; sinks: " + c.sinks.map((s) => s.name + " holds size " + count(s.size)).join(", ");
    }
    target.textContent = text;
  }

  function showTotals(report, refused) {
    const t = report.total;
    document.getElementById("total-cost").textContent = dollars(t.cost_micro_usd);
    document.getElementById("total-requests").textContent = count(t.requests);
    document.getElementById("total-input-tokens").textContent = count(t.input_tokens);
    document.getElementById("total-output-tokens").textContent = count(t.output_tokens);
    // What the totals hold, when they hold it (recorders before these
    // counts leave them out).
    const parts = (pairs) => pairs.filter(([n]) => n > 0).map(([n, what]) => count(n) + " " + what).join(", ");
    document.getElementById("total-input-detail").textContent =
      parts([[t.cached_tokens || 0, "cache reads"], [t.cache_write_tokens || 0, "cache writes"]]);
    document.getElementById("total-output-detail").textContent = parts([[t.reasoning_tokens || 0, "reasoning"]]);
    document.getElementById("total-refused").textContent = count(refused);
  }

  function showQuotas(answer) {
    document.getElementById("quotas-note").textContent = answer.unavailable || "";
    if (!answer.quotas) {
      fillTable("quotas", [], 8, "–");
      return;
    }
    const rows = [];
    for (const q of answer.quotas) {
      const name = (q.namespace ? q.namespace + "/" : "cluster/") + q.name;
      for (const l of q.limits) {
        const s = l.status;
        // The most used capped quantity.
        let best = null;
        for (const [what, cap, used, left] of [
          ["tokens", l.spec.tokens, s.used.tokens, s.remaining.tokens],
          ["requests", l.spec.requests, s.used.requests, s.remaining.requests],
          ["cost", l.spec.costMicroUSD, s.used.costMicroUSD, s.remaining.costMicroUSD],
        ]) {
          if (cap === undefined || cap === null || used === undefined || used === null) continue;
          const share = used / Math.max(cap, 1);
          if (!best || share > best.share) best = { what, cap, used, left, share };
        }
        if (!best) continue;
        const fmt = best.what === "cost" ? dollars : (n) => count(n) + " " + best.what;
        const percent = s.usedPercent === undefined ? Math.floor(best.share * 100) : s.usedPercent;
        const bar = el("div", null, "bar" + (percent >= 100 ? " out" : percent >= q.warningPercent ? " warn" : ""));
        const fill = el("span");
        fill.style.width = Math.min(100, percent) + "%";
        bar.append(fill);
        const barCell = el("td");
        barCell.append(bar, el("span", " " + percent + "%"));
        rows.push([
          name,
          l.spec.name + " (" + (l.spec.window ? l.spec.window + (l.spec.timeZone ? " " + l.spec.timeZone : "") : l.spec.rolling) + ")",
          numCell(fmt(best.used)),
          numCell(fmt(best.cap)),
          barCell,
          numCell(fmt(best.left)),
          when(s.resetAt),
          s.exhaustsAt ? when(s.exhaustsAt) : percent >= 100 ? "exhausted" : s.resetAt ? "not before reset" : "–",
        ]);
      }
    }
    fillTable("quotas", rows, 8, answer.unavailable ? "–" : "No quotas.");
  }

  function showConsumers(report) {
    const rows = report.rows
      .slice()
      .sort((a, b) => b.cost_micro_usd - a.cost_micro_usd || b.requests - a.requests)
      .slice(0, 10)
      .map((r) => [
        r.namespace || "(none)",
        r.service_account || "(none)",
        numCell(count(r.requests)),
        numCell(count(r.input_tokens + r.output_tokens)),
        numCell(dollars(r.cost_micro_usd)),
      ]);
    fillTable("consumers", rows, 5, "No requests in this range.");
  }

  function showRefusals(report) {
    const rows = report.rows
      .filter((r) => r.reason && r.reason !== "allowed")
      .sort((a, b) => b.requests - a.requests || (a.reason < b.reason ? -1 : 1))
      .map((r) => [r.reason, numCell(count(r.requests))]);
    fillTable("refusals", rows, 2, "No refused or failed requests.");
    return report.rows.filter((r) => r.reason && r.reason !== "allowed").reduce((a, r) => a + r.requests, 0);
  }

  function showWarnings(reports) {
    const list = document.getElementById("warnings");
    list.replaceChildren();
    const seen = new Set();
    for (const report of reports) {
      // Open streams are running gateways: the freshness line counts them.
      for (const w of report.warnings.filter((w) => w.code !== "stream_open")) {
        const text = w.code + " in " + w.namespace + ": " + w.message;
        if (seen.has(text)) continue;
        seen.add(text);
        list.append(el("li", text));
      }
      if (report.truncated) {
        list.append(el("li", "more rows than the dashboard reads; narrow the range"));
      }
    }
  }

  async function load() {
    const range = document.getElementById("range").value;
    const by = document.getElementById("by").value;
    const bucket = range === "24h" ? "hour" : "day";
    const bucketSecs = bucket === "hour" ? 3600 : 86400;
    const key = by === "serviceAccount" ? "service_account" : by;
    const message = document.getElementById("message");
    document.body.dataset.state = "loading";
    message.textContent = "Loading…";
    document.getElementById("scope").textContent = session.namespace
      ? "namespace " + session.namespace
      : "every namespace you may read";
    try {
      // Quotas and the checkpoint are panels of their own: when one of them
      // fails, that panel says why and the usage panels still show.
      const panel = (promise, what) => promise.catch((e) => ({ failed: what + ": " + e.message }));
      const [overTime, consumers, reasons, quotaAnswer, checkpointAnswer] = await Promise.all([
        usage({ since: range, group_by: by, bucket }),
        usage({ since: range, group_by: "namespace,serviceAccount" }),
        usage({ since: range, group_by: "reason" }),
        panel(getJson("quotas", {}), "quotas could not be read"),
        panel(getJson("checkpoint", {}), "the checkpoint could not be read"),
      ]);
      const quotas = quotaAnswer.failed ? { quotas: null, unavailable: quotaAnswer.failed } : quotaAnswer;
      const refused = showRefusals(reasons);
      showTotals(overTime, refused);
      showFreshness(overTime);
      if (checkpointAnswer.failed) {
        document.getElementById("checkpoint").textContent = checkpointAnswer.failed;
      } else {
        showCheckpoint(checkpointAnswer);
      }
      for (const c of state.charts) {
        if (c) c.chart.destroy();
      }
      state.charts = [
        drawChart("chart-cost", series(overTime, key, (r) => r.cost_micro_usd, bucketSecs, 1e-6), "USD"),
        drawChart("chart-tokens", series(overTime, key, (r) => r.input_tokens + r.output_tokens, bucketSecs, 1), "tokens"),
      ];
      showQuotas(quotas);
      showConsumers(consumers);
      showWarnings([overTime, consumers, reasons]);
      const empty = overTime.total.requests === 0;
      message.textContent = empty ? "No receipts in this range yet. Requests through the gateway show up here a moment after they finish." : "";
      state.loads += 1;
      document.body.dataset.state = empty ? "empty" : "ready";
    } catch (e) {
      message.textContent = e instanceof ApiError
        ? "The recorder refused: " + e.message
        : "Could not reach the recorder: " + e.message;
      document.body.dataset.state = "error";
    }
  }

  document.getElementById("range").addEventListener("change", load);
  document.getElementById("by").addEventListener("change", load);
  document.getElementById("refresh").addEventListener("click", load);
  // A new URL with another token or namespace, opened in this tab.
  window.addEventListener("hashchange", () => {
    session = readSession();
    load();
  });
  load();
})();
