/* stagetrace report: request list, waterfall and stage details. No dependencies, no network.
   Every text from the data goes through textContent, never innerHTML. */
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('stagetrace-data').textContent);
  var KINDS = DATA.kinds;
  var TLS = DATA.timelines;
  var LIST_PAGE = 500;

  var KIND_CLASS = {
    'gateway': 'k-gateway', 'middleware': 'k-middleware', 'route': 'k-route', 'view': 'k-view',
    'orm.compile': 'k-orm', 'orm.fetch': 'k-orm', 'db.connect': 'k-db', 'db.query': 'k-db',
    'transaction': 'k-db', 'template': 'k-template', 'serialize': 'k-serialize',
    'cache': 'k-cache', 'session': 'k-session', 'response.write': 'k-write', 'task': 'k-task',
    'http.client': 'k-http', 'custom': 'k-custom'
  };

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function ms(ns) { return (ns / 1e6).toFixed(2); }
  function statusClass(s) { return s ? 'st-' + String(s).charAt(0) : ''; }
  function label(tl) { return (tl.method ? tl.method + ' ' : '') + (tl.path || tl.route || tl.name || ''); }
  // What the route menu lists and filters by: the route template, or a job's name (a job has
  // no route; `summary` and `show --route` go by its name too).
  function routeOf(tl) { return tl.protocol === 'job' ? tl.name : tl.route; }
  // An error of the request, as the OpenTelemetry mapping makes its server span one (and the
  // otel sink's otel_keep_errors keeps it): an HTTP 5xx, or an exception that ended it (on the
  // root stage). Not a 4xx — the client's — nor an exception the app or the framework turned
  // into its answer (a view's Http404).
  function isError(tl) {
    if (tl.protocol === 'http' && tl.status !== null && tl.status >= 500) { return true; }
    return tl.stages.some(function (st) { return st[1] === null && st[8]; });
  }

  // --- derived fields, computed once ------------------------------------------------------
  TLS.forEach(function (tl, i) {
    tl.index = i;
    var words = [tl.method, tl.path, routeOf(tl), tl.status, tl.request_id, tl.trace_id,
                 tl.framework, tl.service];
    tl.findings.forEach(function (f) { words.push(f.kind, f.message); });
    // exceptions recorded on the stages: their type and message
    tl.stages.forEach(function (st) { if (st[8]) { words.push(st[8][0], st[8][1]); } });
    tl.search = words.join(' ').toLowerCase();
  });

  // The day of every request when they are all of one ("2025-11-24"), else null.
  var ONE_DAY = (function () {
    var day = null;
    for (var i = 0; i < TLS.length; i++) {
      var parts = TLS[i].time.split(' ');
      if (parts.length !== 2 || (day !== null && parts[0] !== day)) { return null; }
      day = parts[0];
    }
    return day;
  })();

  // --- request list -----------------------------------------------------------------------
  var filtered = [];
  var shown = 0;
  var selected = null;

  function routesOf() {
    var seen = {};
    TLS.forEach(function (tl) { var r = routeOf(tl); seen[r === null ? '' : r] = true; });
    return Object.keys(seen).sort();
  }

  function fillRoutes() {
    var select = $('f-route');
    routesOf().forEach(function (r) {
      var o = el('option', null, r === '' ? '(no route)' : r);
      o.value = r === '' ? '\u0000none' : r;
      select.appendChild(o);
    });
  }

  function matches(tl, text, route, status, withFindings) {
    if (route) {
      if (route === '\u0000none' ? routeOf(tl) !== null : routeOf(tl) !== route) { return false; }
    }
    if (status) {
      var s = tl.status === null ? '' : String(tl.status);
      if (status === 'error') {
        if (!isError(tl)) { return false; }
      } else if (s.charAt(0) !== status.charAt(0)) { return false; }
    }
    if (withFindings && !tl.findings.length) { return false; }
    if (text) {
      var terms = text.split(/\s+/);
      for (var i = 0; i < terms.length; i++) {
        if (terms[i] && tl.search.indexOf(terms[i]) < 0) { return false; }
      }
    }
    return true;
  }

  var SORTS = {
    'slowest': function (a, b) { return b.duration_ns - a.duration_ns; },
    'fastest': function (a, b) { return a.duration_ns - b.duration_ns; },
    'newest': function (a, b) { return b.start_ms - a.start_ms || b.index - a.index; },
    'oldest': function (a, b) { return a.start_ms - b.start_ms || a.index - b.index; }
  };

  function applyFilters() {
    var text = $('f-text').value.trim().toLowerCase();
    var route = $('f-route').value;
    var status = $('f-status').value;
    var withFindings = $('f-findings').checked;
    filtered = TLS.filter(function (tl) { return matches(tl, text, route, status, withFindings); });
    filtered.sort(SORTS[$('f-sort').value] || SORTS.slowest);
    shown = 0;
    var body = $('list-body');
    body.textContent = '';
    renderMore();
    $('count').textContent = filtered.length + ' of ' + TLS.length + ' requests' +
      (DATA.total > TLS.length ? ' (' + DATA.total + ' read, the newest ' + TLS.length + ' kept)' : '');
  }

  function renderMore() {
    var body = $('list-body');
    var end = Math.min(filtered.length, shown + LIST_PAGE);
    var frag = document.createDocumentFragment();
    for (var i = shown; i < end; i++) { frag.appendChild(listRow(filtered[i])); }
    body.appendChild(frag);
    shown = end;
    $('more').hidden = shown >= filtered.length;
    $('more').textContent = 'Show ' + Math.min(LIST_PAGE, filtered.length - shown) + ' more';
  }

  function listRow(tl) {
    var tr = el('tr');
    tr.dataset.index = tl.index;
    if (selected === tl) { tr.className = 'selected'; }
    // "2025-11-24 16:00:00.000Z": the time of day only when every request is of one day (the
    // date is in the column's head), else the date wraps above it where the list is narrow.
    var when = el('td', 'mono time');
    var parts = tl.time.split(' ');
    when.title = tl.time;
    if (ONE_DAY !== null) {
      when.textContent = parts[1];
    } else if (parts.length === 2) {
      when.appendChild(el('span', 'date', parts[0]));
      when.appendChild(document.createTextNode(' '));
      when.appendChild(el('span', null, parts[1]));
    } else { when.textContent = tl.time; }
    tr.appendChild(when);
    // The request column takes the width the others leave, its text cut with an ellipsis
    // (the whole of it in the tooltip) and the findings badge kept in view after it.
    var what = el('td', 'what');
    what.title = label(tl) + (tl.route ? '\nroute ' + tl.route : '');
    var line = el('div', 'what');
    line.appendChild(el('span', 'label', label(tl)));
    if (tl.findings.length) { line.appendChild(el('span', 'badge', tl.findings.length)); }
    what.appendChild(line);
    tr.appendChild(what);
    tr.appendChild(el('td', 'num ' + statusClass(tl.status), tl.status === null ? '' : tl.status));
    tr.appendChild(el('td', 'num', ms(tl.duration_ns)));
    tr.appendChild(el('td', 'num stages', tl.stages.length));
    tr.addEventListener('click', function () { select(tl); });
    return tr;
  }

  // --- one request ------------------------------------------------------------------------
  function treeOrder(stages) {
    var children = {};
    var roots = [];
    stages.forEach(function (st) {
      if (st[1] === null) { roots.push(st); } else { (children[st[1]] = children[st[1]] || []).push(st); }
    });
    var out = [];
    var stack = roots.slice().reverse().map(function (st) { return [st, 0]; });
    while (stack.length) {
      var item = stack.pop();
      out.push(item);
      var kids = children[item[0][0]] || [];
      for (var i = kids.length - 1; i >= 0; i--) { stack.push([kids[i], item[1] + 1]); }
    }
    return out;
  }

  function select(tl) {
    selected = tl;
    var rows = $('list-body').children;
    for (var i = 0; i < rows.length; i++) {
      rows[i].className = rows[i].dataset.index === String(tl.index) ? 'selected' : '';
    }
    var pane = $('detail-pane');
    pane.textContent = '';
    pane.appendChild(requestHead(tl));
    if (tl.findings.length) { pane.appendChild(findingsBox(tl)); }
    pane.appendChild(waterfall(tl));
    var legend = el('div', 'legend',
      'Middleware bars: thick while the middleware runs (in-phase, then out-phase), thin while ' +
      'the inner layers run. Click a row for its details.');
    pane.appendChild(legend);
    var detail = el('div');
    detail.id = 'stage-detail';
    detail.appendChild(el('div', 'empty', 'Select a stage.'));
    pane.appendChild(detail);
  }

  function requestHead(tl) {
    var head = el('div', 'req-head');
    var h = el('h2', null, label(tl) + (tl.status === null ? '' : ' \u2192 ' + tl.status));
    head.appendChild(h);
    var facts = el('div', 'facts');
    function fact(text) { facts.appendChild(el('span', null, text)); }
    fact(ms(tl.duration_ns) + ' ms');
    if (tl.sent_ns !== null) { fact('response sent at ' + ms(tl.sent_ns) + ' ms'); }
    if (tl.route !== null) { fact('route ' + tl.route); }
    fact(tl.framework + '/' + tl.protocol);
    fact(tl.stages.length + ' stages');
    if (tl.dropped_stages) { fact(tl.dropped_stages + ' more stages not kept'); }
    fact(tl.time);
    fact('trace ' + tl.trace_id);
    if (tl.request_id !== tl.trace_id) { fact('request ' + tl.request_id); }
    head.appendChild(facts);
    return head;
  }

  function findingsBox(tl) {
    var box = el('div', 'findings');
    tl.findings.forEach(function (f) {
      var item = el('div', 'finding');
      item.appendChild(el('span', 'fk', f.kind));
      item.appendChild(el('span', null, f.message));
      item.addEventListener('click', function () { highlight(tl, f.stages); });
      box.appendChild(item);
    });
    return box;
  }

  function highlight(tl, ids) {
    var want = {};
    ids.forEach(function (id) { want[id] = true; });
    var rows = document.querySelectorAll('.wf-row');
    var first = null;
    for (var i = 0; i < rows.length; i++) {
      var on = want[rows[i].dataset.stageId] === true;
      rows[i].classList.toggle('hl', on);
      if (on && !first) { first = rows[i]; }
    }
    if (first) {
      first.scrollIntoView({block: 'nearest'});
      showStage(tl, tl.stages[Number(first.dataset.stageId)], first);
    }
  }

  // `django.contrib.sessions.middleware.SessionMiddleware` -> `…SessionMiddleware` (the full
  // name is in the row's tooltip and in the details).
  function shortName(name) {
    if (name.length <= 32 || !/^[A-Za-z_][\w]*(\.[A-Za-z_<>][\w<>]*)+$/.test(name)) { return name; }
    var parts = name.split('.');
    var tail = parts.pop();
    if (parts.length && /^[a-z_]/.test(tail) && /^[A-Z]/.test(parts[parts.length - 1])) {
      tail = parts.pop() + '.' + tail;  // Class.method
    }
    return '\u2026' + tail;
  }

  function pct(ns, total) { return total > 0 ? Math.max(0, Math.min(100, ns * 100 / total)) : 0; }

  function bar(cls, left, width) {
    var b = el('div', cls);
    b.style.left = left + '%';
    b.style.width = width + '%';
    return b;
  }

  function waterfall(tl) {
    var total = tl.duration_ns;
    var box = el('div', 'waterfall');
    box.id = 'waterfall';
    var axis = el('div', 'wf-axis');
    axis.appendChild(el('div', null, 'stage'));
    axis.appendChild(el('div', 'wf-num', 'start'));
    axis.appendChild(el('div', 'wf-num', 'dur'));
    axis.appendChild(el('div', 'wf-num', 'self'));
    var ticks = el('div', 'wf-ticks');
    [0, 25, 50, 75, 100].forEach(function (p) {
      var t = el('div', 'wf-tick', ms(total * p / 100));
      t.style.left = Math.min(96, Math.max(4, p)) + '%';
      ticks.appendChild(t);
    });
    axis.appendChild(ticks);
    box.appendChild(axis);
    var frag = document.createDocumentFragment();
    treeOrder(tl.stages).forEach(function (item) {
      var st = item[0];
      var depth = item[1];
      var kind = KINDS[st[2]];
      var row = el('div', 'wf-row');
      row.dataset.stageId = st[0];
      row.dataset.kind = kind;
      var lab = el('div', 'wf-label');
      lab.style.paddingLeft = (6 + Math.min(depth, 16) * 10) + 'px';
      lab.appendChild(el('span', 'wf-kind', kind));
      lab.appendChild(el('span', 'wf-name', shortName(st[3])));
      if (kind === 'middleware' && st[9]) {
        lab.appendChild(el('span', 'wf-phase',
          st[10] ? 'short-circuit' : 'in ' + ms(st[9][0]) + ' / out ' + ms(st[9][1])));
      }
      if (st[8]) { lab.appendChild(el('span', 'wf-err', '\u2717 ' + st[8][0].split('.').pop())); }
      lab.title = kind + ' ' + st[3];
      row.appendChild(lab);
      row.appendChild(el('div', 'wf-num', ms(st[4])));
      row.appendChild(el('div', 'wf-num', ms(st[5])));
      row.appendChild(el('div', 'wf-num', ms(st[6])));
      var track = el('div', 'wf-track');
      var cls = KIND_CLASS[kind] || 'k-custom';
      var left = pct(st[4], total);
      var width = pct(st[5], total);
      var main = bar('wf-bar ' + cls + (st[8] ? ' error' : ''), left, width);
      if (kind === 'middleware' && st[9] && !st[10] && st[9][1] > 0) {
        // The onion: in-phase, the inner layers (thin), out-phase.
        main.className = 'wf-bar wf-mw';
        main.style.background = 'transparent';
        var inW = pct(st[9][0], total);
        var outW = pct(st[9][1], total);
        track.appendChild(bar('wf-seg wf-in ' + cls, left, inW));
        track.appendChild(bar('wf-inner ' + cls, left + inW, Math.max(0, width - inW - outW)));
        track.appendChild(bar('wf-seg wf-out ' + cls, left + width - outW, outW));
      }
      track.appendChild(main);
      if (st[0] === 0 && tl.sent_ns !== null && tl.sent_ns < total) {
        var sent = el('div', 'wf-sent');
        sent.style.left = pct(tl.sent_ns, total) + '%';
        sent.title = 'response sent at ' + ms(tl.sent_ns) + ' ms';
        track.appendChild(sent);
      }
      row.appendChild(track);
      row.addEventListener('click', function () { showStage(tl, st, row); });
      frag.appendChild(row);
    });
    box.appendChild(frag);
    return box;
  }

  var SQL_KEYS = ['db.query.text', 'db.statement'];

  function showStage(tl, st, row) {
    var rows = document.querySelectorAll('.wf-row.selected');
    for (var i = 0; i < rows.length; i++) { rows[i].classList.remove('selected'); }
    if (row) { row.classList.add('selected'); }
    var box = $('stage-detail');
    box.textContent = '';
    var kind = KINDS[st[2]];
    box.appendChild(el('h3', null, kind + ' \u00b7 ' + st[3]));
    var facts = 'start ' + ms(st[4]) + ' ms \u00b7 duration ' + ms(st[5]) + ' ms \u00b7 self ' +
      ms(st[6]) + ' ms \u00b7 id ' + st[0] + (st[1] === null ? '' : ' \u00b7 parent ' + st[1]);
    if (kind === 'middleware' && st[9]) {
      facts += st[10] ? ' \u00b7 short-circuit (answered without calling the next layer)' :
        ' \u00b7 in-phase ' + ms(st[9][0]) + ' ms \u00b7 out-phase ' + ms(st[9][1]) + ' ms';
    }
    box.appendChild(el('div', 'facts', facts));
    if (st[8]) { box.appendChild(el('div', 'error-box', st[8][0] + ': ' + st[8][1])); }
    var attrs = st[7] || {};
    SQL_KEYS.forEach(function (k) {
      if (typeof attrs[k] === 'string') {
        var pre = el('pre', 'sql', attrs[k]);
        box.appendChild(pre);
      }
    });
    var keys = Object.keys(attrs).filter(function (k) { return SQL_KEYS.indexOf(k) < 0; }).sort();
    if (keys.length) {
      var table = el('table', 'attrs');
      keys.forEach(function (k) {
        var tr = el('tr');
        tr.appendChild(el('td', 'mono', k));
        var v = attrs[k];
        tr.appendChild(el('td', 'mono', typeof v === 'string' ? v : JSON.stringify(v)));
        table.appendChild(tr);
      });
      box.appendChild(table);
    }
    tl.findings.forEach(function (f) {
      if (f.stages.indexOf(st[0]) >= 0) {
        var item = el('div', 'finding');
        item.appendChild(el('span', 'fk', f.kind));
        item.appendChild(el('span', null, f.message));
        box.appendChild(item);
      }
    });
  }

  // --- findings across requests -----------------------------------------------------------
  function overview() {
    var groups = {};
    var order = [];
    TLS.forEach(function (tl) {
      var counted = {};  // a pattern counts once per request
      tl.findings.forEach(function (f) {
        // statements cut to the same recorded text are told apart by their hash
        var hash = (f.attrs && f.attrs['stagetrace.db.query.hash']) || '';
        var key = f.kind + '\u0000' + (routeOf(tl) || '') + '\u0000' +
          (f.fingerprint || f.message) + '\u0000' + hash;
        if (!groups[key]) {
          groups[key] = {kind: f.kind, route: routeOf(tl), message: f.message, count: 0};
          order.push(key);
        }
        if (!counted[key]) {
          counted[key] = true;
          groups[key].count += 1;
        }
      });
    });
    var box = $('overview');
    if (!order.length) { box.hidden = true; return; }
    box.querySelector('summary').textContent = 'Findings: ' + order.length +
      ' pattern' + (order.length === 1 ? '' : 's') + ' across the requests (click to filter)';
    var table = el('table', 'overview');
    order.sort(function (a, b) { return groups[b].count - groups[a].count; });
    order.forEach(function (key) {
      var g = groups[key];
      var tr = el('tr');
      tr.appendChild(el('td', 'num', g.count + '\u00d7'));
      tr.appendChild(el('td', null, g.kind));
      tr.appendChild(el('td', null, g.route === null ? '(no route)' : g.route));
      tr.appendChild(el('td', null, g.message));
      tr.addEventListener('click', function () {
        $('f-route').value = g.route === null ? '\u0000none' : g.route;
        $('f-findings').checked = true;
        $('f-text').value = g.kind;
        applyFilters();
        if (filtered.length) { select(filtered[0]); }
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
  }

  // --- start ------------------------------------------------------------------------------
  if (DATA.sort) { $('f-sort').value = DATA.sort; }
  fillRoutes();
  if (ONE_DAY !== null) { $('th-time').appendChild(el('div', 'day', ONE_DAY)); }
  ['f-route', 'f-status', 'f-findings', 'f-sort'].forEach(function (id) {
    $(id).addEventListener('change', applyFilters);
  });
  // With thousands of requests, filter once typing pauses rather than on every key.
  var typing = null;
  $('f-text').addEventListener('input', function () {
    if (TLS.length < 1000) { applyFilters(); return; }
    clearTimeout(typing);
    typing = setTimeout(applyFilters, 150);
  });
  $('more').addEventListener('click', renderMore);
  var reload = $('reload');
  if (reload) { reload.addEventListener('click', function () { window.location.reload(); }); }
  overview();
  applyFilters();
  if (filtered.length) { select(filtered[0]); }
  document.body.dataset.ready = 'true';
})();
