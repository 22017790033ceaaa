// saev-ops serve: the pages' interactive parts. Data comes from the page itself (JSON in <script type="application/json">)
// or from the app's /api/ routes; text from the data is set with textContent, never parsed as HTML.
'use strict';
window.__errors = 0;
window.addEventListener('error', function () { window.__errors++; }, true); // scripts and failed resources
(function () {
  var e = console.error;
  console.error = function () { window.__errors++; e.apply(console, arguments); };
})();

var plotsPending = 0;
function plotStarted() { plotsPending++; document.body.setAttribute('data-plots-pending', String(plotsPending)); }
function plotDone() { plotsPending--; document.body.setAttribute('data-plots-pending', String(plotsPending)); }

function jsonOf(id) {
  var el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

function query(form) {
  var parts = [];
  new FormData(form).forEach(function (v, k) { if (v !== '') { parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(v)); } });
  return parts.join('&');
}

function fetchJson(url) {
  return fetch(url, { credentials: 'same-origin' }).then(function (r) {
    return r.json().then(function (body) {
      if (!r.ok) { throw new Error(body.error || ('HTTP ' + r.status)); }
      return body;
    });
  });
}

function say(el, text) { // a message in place of a plot (a bad key, no data)
  if (window.Plotly) { Plotly.purge(el); }
  el.textContent = text;
  el.classList.add('legend');
}

var LAYOUT = { margin: { l: 60, r: 20, t: 20, b: 50 }, hovermode: 'closest', font: { size: 11 } };

function histogram(el, hist, xtitle) {
  if (!el || !hist || !hist.counts.length) { if (el) { say(el, 'nothing to plot'); } return; }
  var mids = hist.counts.map(function (_, i) { return (hist.edges[i] + hist.edges[i + 1]) / 2; });
  plotStarted();
  Plotly.newPlot(el, [{ type: 'bar', x: mids, y: hist.counts, marker: { color: '#5566aa' } }],
    Object.assign({}, LAYOUT, { xaxis: { title: { text: xtitle } }, yaxis: { title: { text: 'latents or rows' } }, bargap: 0.05 }),
    { displaylogo: false, responsive: true }).then(plotDone);
}

function pareto() {
  var form = document.getElementById('pareto-form'), el = document.getElementById('pareto');
  if (!form || !el) { return; }
  var draw = function () {
    plotStarted();
    fetchJson('/api/sweep/' + encodeURIComponent(form.dataset.sweep) + '/points?' + query(form)).then(function (d) {
      var traces = [];
      d.groups.forEach(function (g) {
        traces.push({ type: 'scatter', mode: 'markers', name: g.group, x: g.points.map(function (p) { return p.x; }),
          y: g.points.map(function (p) { return p.y; }), customdata: g.points.map(function (p) { return p.run; }),
          text: g.points.map(function (p) { return p.label + ' (' + p.status + ')'; }),
          hovertemplate: '%{text}<br>' + d.x + ' %{x:.4g}<br>' + d.y + ' %{y:.4g}<extra></extra>', marker: { size: 9 } });
        traces.push({ type: 'scatter', mode: 'lines', name: g.group + ' frontier', showlegend: false, hoverinfo: 'skip',
          x: g.frontier.map(function (p) { return p.x; }), y: g.frontier.map(function (p) { return p.y; }),
          line: { dash: 'dot', width: 1 } });
      });
      var dir = function (key, b) { return key + (b ? ' (' + b + ' is better)' : ''); };
      return Plotly.newPlot(el, traces, Object.assign({}, LAYOUT, {
        xaxis: { title: { text: dir(d.x, d.better.x) } }, yaxis: { title: { text: dir(d.y, d.better.y) } } }),
        { displaylogo: false, responsive: true }).then(function () {
        el.setAttribute('data-points', String(d.groups.reduce(function (n, g) { return n + g.points.length; }, 0)));
        el.removeAllListeners && el.removeAllListeners('plotly_click');
        el.on('plotly_click', function (ev) {
          var run = ev.points[0].customdata;
          if (run !== undefined) { window.location.href = '/run/' + run; }
        });
      });
    }).catch(function (err) { say(el, err.message); }).then(plotDone);
  };
  form.addEventListener('change', draw);
  draw();
}

function curves() {
  var form = document.getElementById('curves-form'), el = document.getElementById('curves');
  if (!form || !el) { return; }
  var draw = function () {
    plotStarted();
    fetchJson(form.dataset.src + '?' + query(form)).then(function (d) {
      if (!d.series.length) { say(el, 'no history of ' + d.key + ' yet'); return null; }
      var traces = d.series.map(function (s) { // held-out values as dots beside the training line
        return { type: 'scatter', mode: s.held_out ? 'lines+markers' : 'lines', name: 'run ' + s.run + (s.held_out ? ' (held out)' : ''),
          x: s.step, y: s.value, line: s.held_out ? { dash: 'dot' } : {} };
      });
      el.classList.remove('legend');
      return Plotly.newPlot(el, traces, Object.assign({}, LAYOUT, { xaxis: { title: { text: 'step' } },
        yaxis: { title: { text: d.key } } }), { displaylogo: false, responsive: true });
    }).catch(function (err) { say(el, err.message); }).then(plotDone);
  };
  form.addEventListener('change', draw);
  draw();
}

function liveTable() {
  var box = document.getElementById('table');
  if (!box) { return; }
  var tick = function () {
    var table = document.getElementById('runs');
    if (!table || table.dataset.active !== '1') { return; }
    fetch(box.dataset.src, { credentials: 'same-origin' }).then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, 'text/html'); // the server's own escaped fragment
        box.replaceChildren.apply(box, Array.prototype.slice.call(doc.body.childNodes));
        setTimeout(tick, 5000);
      });
  };
  setTimeout(tick, 5000);
}

function patches() {
  var data = jsonOf('patch-data'), grid = document.getElementById('patches');
  if (!data || !grid) { return; }
  var title = document.getElementById('patch-title'), list = document.getElementById('patch-latents');
  grid.addEventListener('click', function (ev) {
    var cell = ev.target.closest('.patch');
    if (!cell) { return; }
    grid.querySelectorAll('.patch.selected').forEach(function (c) { c.classList.remove('selected'); });
    cell.classList.add('selected');
    var p = cell.dataset.patch, lats = data.patches[p] || [], n = data.totals[p] || 0;
    title.textContent = 'Patch ' + p + ': ' + n + (n === 1 ? ' latent' : ' latents') +
      (n > lats.length ? ' (the ' + lats.length + ' strongest listed)' : '');
    list.replaceChildren();
    lats.forEach(function (pair) {
      var li = document.createElement('li'), a = document.createElement('a');
      a.href = '/output/' + data.output + '/latent/' + pair[0];
      a.textContent = 'latent ' + pair[0];
      li.appendChild(a);
      li.appendChild(document.createTextNode(' ' + pair[1].toPrecision(4)));
      list.appendChild(li);
    });
  });
}

document.addEventListener('DOMContentLoaded', function () {
  pareto();
  curves();
  liveTable();
  patches();
  histogram(document.getElementById('freq-hist'), jsonOf('freq-data'), 'log10 frequency');
  histogram(document.getElementById('act-hist'), jsonOf('act-data'), 'activation');
});

window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-loaded', '1');
});
