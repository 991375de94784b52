// Conveyor console: hash-routed views of builds (#/builds, #/builds/<id>) and deploys
// (#/deploys, #/deploys/<app>/<env>). Everything the services send is put into the page as
// text, never as HTML. Actions send the API token from sessionStorage in the Authorization
// header; it never goes into a URL.
'use strict';

const TOKEN_KEY = 'conveyor.apiToken';
const NAME_KEY = 'conveyor.name';
// Who the deploy commits say asked: the name typed with the token, or `console`.
const requester = () => sessionStorage.getItem(NAME_KEY) || 'console';
const state = { config: { jaeger_url: 'http://localhost:16686' }, timer: null, logAbort: null, view: 0, render: () => {} };

// --- small helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const short = (s, n) => (s ? String(s).slice(0, n) : '');
const token = () => sessionStorage.getItem(TOKEN_KEY);

function when(iso) {
  if (!iso) return '';
  const t = new Date(iso);
  const s = Math.round((Date.now() - t.getTime()) / 1000);
  const rel = s < 60 ? `${Math.max(s, 0)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : s < 86400 ? `${Math.round(s / 3600)} h ago` : t.toISOString().slice(0, 10);
  return el('time', { datetime: iso, title: t.toISOString() }, rel);
}

function duration(ms) {
  if (ms === null || ms === undefined) return '';
  return ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

const SYMBOL = { succeeded: '✔', failed: '✖', cancelled: '⊘', running: '●', queued: '…', skipped: '↷' };
function stateBadge(s) {
  return el('span', { class: `state ${s}`, 'data-state': s }, `${SYMBOL[s] || ''} ${s}`.trim());
}

function showAlert(text) {
  const a = $('alert');
  a.textContent = text;
  a.hidden = !text;
}

function showNotice(...parts) {
  const n = $('notice');
  n.replaceChildren(...parts);
  n.hidden = parts.length === 0;
}

// A JSON call through the console. A refusal throws an Error carrying the API's own message.
async function api(path, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  if (options.auth) {
    const t = token();
    if (!t) throw new Error('Enter the API token (at the top of the page) before this action.');
    headers.Authorization = `Bearer ${t}`;
  }
  let res;
  try {
    res = await fetch(path, { method: options.method || 'GET', headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  } catch (e) {
    throw new Error(`The console did not answer: ${e.message}`);
  }
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!res.ok) {
    const msg = body && body.message ? `${body.message} (${body.error}, HTTP ${res.status})` : `HTTP ${res.status}: ${text.slice(0, 300) || res.statusText}`;
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return body;
}

function traceLink(traceId) {
  if (!traceId) return el('span', { class: 'meta' }, 'no trace');
  const copy = el('button', { type: 'button', class: 'small', 'aria-label': `Copy trace id ${traceId}` }, 'Copy');
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(traceId);
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.execCommand('copy');
    }
    copy.textContent = 'Copied';
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  const code = el('code', { class: 'trace-id' }, traceId);
  return el('span', { class: 'trace' },
    el('a', { href: `${state.config.jaeger_url}/trace/${encodeURIComponent(traceId)}`, target: '_blank', rel: 'noopener noreferrer', class: 'trace-link' }, 'Trace in Jaeger'),
    code, copy);
}

// --- token -----------------------------------------------------------------------------------

function renderToken() {
  const set = !!token();
  $('token-form').hidden = set;
  $('token-set').hidden = !set;
  $('token-status').textContent = set ? `API token set for this session, acting as ${requester()}` : '';
}

function setupToken() {
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token-input').value.trim();
    $('token-input').value = '';
    if (!v) { showAlert('The API token is empty.'); return; }
    sessionStorage.setItem(TOKEN_KEY, v);
    const name = $('name-input').value.trim();
    if (name) sessionStorage.setItem(NAME_KEY, name); else sessionStorage.removeItem(NAME_KEY);
    showAlert('');
    renderToken();
    $('token-forget').focus();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    renderToken();
    $('token-input').focus();
  });
  renderToken();
}

// --- confirmation dialog -----------------------------------------------------------------------

function confirmDiff(title, summary, diff) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-summary').textContent = summary;
  $('confirm-diff').textContent = diff || '(no change to the manifests)';
  return new Promise((resolve) => {
    const done = (ok) => {
      $('confirm-ok').onclick = null;
      $('confirm-cancel').onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(ok);
    };
    $('confirm-ok').onclick = () => done(true);
    $('confirm-cancel').onclick = () => done(false);
    dialog.onclose = () => done(false);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

// A replay (rollback, redeploy, promotion): the dry run's diff first, then, confirmed, the real one.
async function replayAction(title, request, opener) {
  showAlert('');
  showNotice();
  try {
    const plan = await api('/api/cd/replay', { method: 'POST', auth: true, body: { ...request, requested_by: requester(), dry_run: true } });
    const summary = `${plan.kind} of ${plan.app}: ${plan.image} into ${plan.environment} (the image of stream event ${plan.of_sequence}).`;
    const ok = await confirmDiff(title, summary, plan.diff);
    if (!ok) { if (opener) opener.focus(); return; }
    const done = await api('/api/cd/replay', { method: 'POST', auth: true, body: { ...request, requested_by: requester(), dry_run: false } });
    showNotice(`Queued: ${done.kind} of ${done.image} into ${done.environment} (event ${done.sequence}). `, traceLink(done.trace_id));
    refresh();
  } catch (e) {
    showAlert(e.message);
  }
  if (opener && document.body.contains(opener)) opener.focus();
}

// --- builds ------------------------------------------------------------------------------------

function buildRow(b) {
  return el('tr', { 'data-build-id': b.id },
    el('td', {}, el('a', { href: `#/builds/${b.id}` }, `#${b.id}`)),
    el('td', {}, stateBadge(b.state)),
    el('td', {}, b.app),
    el('td', {}, b.ref_name),
    el('td', { class: 'mono' }, short(b.commit, 12)),
    el('td', { class: 'optional' }, b.source),
    el('td', { class: 'optional' }, when(b.queued_at)),
    el('td', { class: 'optional' }, b.started_at && b.finished_at ? duration(new Date(b.finished_at) - new Date(b.started_at)) : ''));
}

async function viewBuilds(view) {
  const body = el('tbody', { id: 'builds-body' });
  $('main').replaceChildren(
    el('h1', {}, 'Builds'),
    el('div', { class: 'table-wrap' }, el('table', { class: 'builds' },
      el('caption', {}, 'Newest first; updates by itself.'),
      el('thead', {}, el('tr', {}, ['Build', 'State', 'App', 'Ref', 'Commit'].map((h) => el('th', { scope: 'col' }, h)),
        ['Trigger', 'Queued', 'Took'].map((h) => el('th', { scope: 'col', class: 'optional' }, h)))),
      body)));
  const update = async () => {
    const builds = await api('/api/ci/builds?limit=50');
    if (view !== state.view) return;
    // Rows are replaced in place, keyed by build number, so a focused link keeps its place.
    const rows = new Map([...body.children].map((r) => [r.dataset.buildId, r]));
    let prev = null;
    for (const b of builds) {
      const fresh = buildRow(b);
      const old = rows.get(String(b.id));
      let row = old;
      if (!old) row = fresh;
      else if (old.textContent !== fresh.textContent) {
        for (let i = 1; i < fresh.children.length; i++) old.children[i].replaceWith(fresh.children[i].cloneNode(true));
      }
      rows.delete(String(b.id));
      if (prev ? prev.nextSibling !== row : body.firstChild !== row) body.insertBefore(row, prev ? prev.nextSibling : body.firstChild);
      prev = row;
    }
    for (const r of rows.values()) r.remove();
    if (builds.length === 0 && !$('no-builds')) $('main').append(el('p', { id: 'no-builds' }, 'No builds yet: push a commit.'));
    if (builds.length > 0 && $('no-builds')) $('no-builds').remove();
  };
  await poll(view, update, 1500);
}

function buildActions(b, view) {
  const box = el('div', { class: 'actions', id: 'build-actions' });
  const pushing = (b.steps || []).some((s) => s.name === 'push');
  if ((b.state === 'queued' || b.state === 'running') && !pushing) {
    box.append(el('button', { type: 'button', id: 'cancel-build', onclick: async (e) => {
      showAlert('');
      try { await api(`/api/ci/builds/${b.id}/cancel`, { method: 'POST', auth: true }); showNotice(`Cancelling build #${b.id}.`); } catch (err) { showAlert(err.message); }
      e.target.focus();
    } }, 'Cancel build'));
  }
  const failedStep = [...(b.steps || [])].reverse().find((s) => s.state === 'failed');
  if (b.state === 'failed' && failedStep && (failedStep.name === 'push' || failedStep.name === 'publish') && b.repository) {
    box.append(el('button', { type: 'button', id: 'retry-build', onclick: async (e) => {
      showAlert('');
      try { await api(`/api/ci/builds/${b.id}/retry`, { method: 'POST', auth: true }); showNotice(`Retrying the ${failedStep.name} of build #${b.id}.`); } catch (err) { showAlert(err.message); }
      e.target.focus();
    } }, `Retry ${failedStep.name}`));
  }
  return box;
}

function buildDetails(b) {
  const image = b.repository ? `${b.repository}:${(b.tags || [])[0] || ''}` : '';
  const field = (k, v) => [el('dt', {}, k), el('dd', {}, v === '' || v === null || v === undefined ? '—' : v)];
  return el('dl', { class: 'fields', id: 'build-fields' },
    field('State', stateBadge(b.state)),
    field('App', b.app),
    field('Ref', `${b.ref_name} (${b.ref_kind.replace('_', ' ')})`),
    b.pull_request ? field('Pull request', `#${b.pull_request.number}: ${b.pull_request.head_ref} into ${b.pull_request.base_ref}` +
      (b.pull_request.from_fork ? ` (from the fork ${b.pull_request.head_repo || 'of an unknown repository'}; not pushed)` : ' (not pushed)')) : [],
    field('Commit', el('code', {}, b.commit)),
    b.tag_object ? field('Tag object', el('code', {}, b.tag_object)) : [],
    field('Repository', b.repo_url),
    field('Triggered by', `${b.source}${b.delivery ? ` (delivery ${b.delivery})` : ''}`),
    field('Queued', when(b.queued_at)),
    field('Image', image ? el('code', { id: 'build-image' }, image) : ''),
    field('Digest', b.digest ? el('code', {}, b.digest) : ''),
    field('Event', b.event_id ? `${b.event_id} (stream sequence ${b.event_sequence})` : ''),
    b.reason ? field('Reason', el('strong', { id: 'build-reason' }, b.reason)) : [],
    field('Trace', traceLink(b.trace_id)));
}

function stepsTable(b) {
  return el('div', { class: 'table-wrap' }, el('table', { id: 'build-steps' },
    el('caption', {}, 'Steps'),
    el('thead', {}, el('tr', {}, ['Step', 'State', 'Took'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, (b.steps || []).map((s) => el('tr', { 'data-step': s.name },
      el('td', {}, s.name), el('td', {}, stateBadge(s.state)), el('td', {}, duration(s.duration_ms)))))));
}

async function viewBuild(view, id) {
  const log = el('pre', { class: 'log', id: 'build-log', tabindex: '0', 'aria-label': `Log of build ${id}` });
  const logState = el('p', { id: 'log-state', role: 'status' }, 'Log: connecting…');
  const head = el('div', { id: 'build-head' });
  $('main').replaceChildren(el('p', {}, el('a', { href: '#/builds' }, '← All builds')), el('h1', {}, `Build #${id}`), head,
    el('h2', {}, 'Log'), logState, log);
  streamLog(view, id, log, logState);
  let last = '';
  await poll(view, async () => {
    const b = await api(`/api/ci/builds/${encodeURIComponent(id)}`);
    if (view !== state.view) return;
    const key = JSON.stringify(b);
    if (key === last) return;
    last = key;
    const focused = document.activeElement && document.activeElement.id;
    head.replaceChildren(buildDetails(b), buildActions(b, view), stepsTable(b));
    if (focused && $(focused)) $(focused).focus();
  }, 1500);
}

// Follows the build's log over Server-Sent Events (read with fetch, so no token or id ends up
// in a URL the browser logs), appending each line as it arrives.
async function streamLog(view, id, log, logState) {
  const abort = new AbortController();
  state.logAbort = abort;
  try {
    const res = await fetch(`/api/ci/builds/${encodeURIComponent(id)}/logs`, { headers: { Accept: 'text/event-stream' }, signal: abort.signal });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      logState.textContent = `Log: ${body && body.message ? body.message : `HTTP ${res.status}`}`;
      return;
    }
    logState.textContent = 'Log: streaming live…';
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
        const raw = buf.slice(0, cut);
        buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
        const ev = { event: 'message', data: [] };
        for (const line of raw.split(/\r?\n/)) {
          if (line.startsWith(':')) continue;
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
          if (field === 'event') ev.event = val;
          else if (field === 'data') ev.data.push(val);
        }
        if (view !== state.view) return;
        const data = ev.data.join('\n');
        if (ev.event === 'log') {
          const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
          log.append(document.createTextNode(`${data}\n`));
          if (stick) log.scrollTop = log.scrollHeight;
        } else if (ev.event === 'end') {
          logState.textContent = `Log: complete (build ${data}).`;
          log.dataset.complete = 'true';
        } else if (ev.event === 'error') {
          logState.textContent = `Log: stream error: ${data}`;
        }
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') logState.textContent = `Log: ${e.message}`;
  }
}

// --- deploys ------------------------------------------------------------------------------------

const ENV_ORDER = (a, b) => (a.policy === b.policy ? 0 : a.policy === 'auto' ? -1 : 1);

function deployedBy(d) {
  if (d.kind === 'build') return `build #${d.build_id}`;
  return `${d.kind}${d.requested_by ? ` by ${d.requested_by}` : ''}`;
}

function deployCell(s, envs) {
  const d = s.current;
  const cell = el('td', { class: 'cell', 'data-cell': `${s.app}/${s.environment}`, 'data-env': s.environment, 'data-tag': d ? d.tag : '' });
  if (s.policy === 'manual') cell.append(el('span', { class: 'badge' }, 'Held: manual policy, deployed by promotion only'));
  if (s.pinned) cell.append(el('span', { class: 'badge' }, `Pinned: ${s.pinned}`));
  if (!d) {
    cell.append(el('p', { class: 'meta' }, 'Nothing deployed by Conveyor yet.'));
  } else {
    cell.append(
      el('div', {}, el('span', { class: 'visually-label' }, 'Tag '), el('code', { class: 'tag' }, d.tag)),
      el('div', { class: 'meta' }, 'digest ', el('code', { title: d.digest }, short(d.digest, 19))),
      el('div', { class: 'meta' }, 'commit ', el('code', {}, short(d.source_commit, 12))),
      el('div', { class: 'meta' }, deployedBy(d), ', ', when(d.deployed_at)),
      el('div', { class: 'meta' }, traceLink(d.trace_id)));
  }
  const actions = el('div', { class: 'actions' });
  if (d) {
    for (const other of envs.filter((e) => e.environment !== s.environment)) {
      actions.append(el('button', { type: 'button', 'data-action': `promote:${other.environment}`, onclick: (e) => replayAction(
        `Promote ${s.app} ${d.tag} to ${other.environment}`,
        { app: s.app, tag: d.tag, environment: s.environment, into: other.environment }, e.target) }, `Promote to ${other.environment}`));
    }
    actions.append(el('button', { type: 'button', 'data-action': 'rollback', onclick: (e) => replayAction(
      `Roll back ${s.app} in ${s.environment}`, { app: s.app, to: 'previous', environment: s.environment }, e.target) }, 'Roll back to previous'));
    actions.append(el('button', { type: 'button', 'data-action': 'redeploy', onclick: (e) => replayAction(
      `Redeploy ${s.app} ${d.tag} in ${s.environment}`, { app: s.app, tag: d.tag, environment: s.environment }, e.target) }, 'Redeploy'));
  }
  actions.append(el('a', { href: `#/deploys/${encodeURIComponent(s.app)}/${encodeURIComponent(s.environment)}`, 'data-action': 'history' }, 'History'));
  cell.append(actions);
  return cell;
}

async function viewDeploys(view) {
  const box = el('div', { id: 'matrix' });
  $('main').replaceChildren(el('h1', {}, 'Deploys'), el('p', { class: 'meta' }, 'What each environment runs; updates by itself. Every action shows its diff first.'), box);
  let last = '';
  await poll(view, async () => {
    const list = await api('/api/cd/environments');
    if (view !== state.view) return;
    const key = JSON.stringify(list);
    if (key === last) return;
    last = key;
    const apps = [...new Set(list.map((s) => s.app))];
    const envNames = [];
    for (const s of [...list].sort(ENV_ORDER)) if (!envNames.includes(s.environment)) envNames.push(s.environment);
    if (apps.length === 0) { box.replaceChildren(el('p', {}, 'No apps yet: the manifest repository has no conveyor.yaml and nothing was deployed.')); return; }
    const focused = document.activeElement;
    const focusKey = focused && focused.closest && focused.closest('[data-cell]') ? [focused.closest('[data-cell]').dataset.cell, focused.dataset.action] : null;
    box.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'matrix', id: 'deploy-matrix' },
      el('caption', {}, 'Apps × environments'),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'App'), envNames.map((e) => el('th', { scope: 'col' }, e)))),
      el('tbody', {}, apps.map((app) => {
        const envs = list.filter((s) => s.app === app);
        return el('tr', {}, el('th', { scope: 'row' }, app), envNames.map((name) => {
          const s = envs.find((x) => x.environment === name);
          return s ? deployCell(s, envs) : el('td', { 'data-env': name }, '—');
        }));
      })))));
    if (focusKey) {
      const again = box.querySelector(`[data-cell="${CSS.escape(focusKey[0])}"] [data-action="${CSS.escape(focusKey[1] || '')}"]`);
      if (again) again.focus();
    }
  }, 2000);
}

async function viewHistory(view, app, env) {
  const body = el('tbody', { id: 'history-body' });
  $('main').replaceChildren(el('p', {}, el('a', { href: '#/deploys' }, '← All environments')), el('h1', {}, `${app} in ${env}: history`),
    el('div', { class: 'table-wrap' }, el('table', { id: 'history' }, el('caption', {}, 'Newest first'),
      el('thead', {}, el('tr', {}, ['When', 'Tag', 'How', 'Commit', 'Manifest commit', 'Trace', ''].map((h) => el('th', { scope: 'col' }, h)))), body)));
  let last = '';
  await poll(view, async () => {
    const list = await api(`/api/cd/history?app=${encodeURIComponent(app)}&env=${encodeURIComponent(env)}&limit=50`);
    if (view !== state.view) return;
    const key = JSON.stringify(list);
    if (key === last) return;
    last = key;
    body.replaceChildren(...list.map((d, i) => {
      const target = d.sequence ? { sequence: d.sequence } : { tag: d.tag };
      const label = i === 0 ? 'Redeploy' : 'Roll back to this';
      return el('tr', { 'data-tag': d.tag },
        el('td', {}, when(d.deployed_at)), el('td', {}, el('code', {}, d.tag)), el('td', {}, deployedBy(d)),
        el('td', {}, el('code', {}, short(d.source_commit, 12))), el('td', {}, el('code', {}, short(d.manifest_commit, 12))),
        el('td', {}, traceLink(d.trace_id)),
        el('td', {}, el('button', { type: 'button', 'data-action': i === 0 ? 'redeploy' : 'rollback-to', 'aria-label': `${label}: ${d.tag}`,
          onclick: (e) => replayAction(`${label}: ${app} ${d.tag} in ${env}`, { app, environment: env, ...target }, e.target) }, label)));
    }));
    if (list.length === 0) body.append(el('tr', {}, el('td', { colspan: 7 }, 'Nothing deployed here by Conveyor yet.')));
  }, 3000);
}

// --- routing -------------------------------------------------------------------------------------

// Runs `update` now and every `ms` while `view` is the current one; an error is shown, and the
// next round tries again.
async function poll(view, update, ms) {
  const round = async () => {
    if (view !== state.view) return;
    try {
      await update();
      if ($('alert').dataset.from === 'poll') { showAlert(''); delete $('alert').dataset.from; }
    } catch (e) {
      showAlert(e.message);
      $('alert').dataset.from = 'poll';
    }
    if (view === state.view) state.timer = setTimeout(round, ms);
  };
  await round();
}

// Renders the current view again with a fresh view number: the previous view's poll and log
// stream stop, since they check the number.
function refresh() {
  state.view += 1;
  clearTimeout(state.timer);
  if (state.logAbort) state.logAbort.abort();
  state.render(state.view);
}

function route() {
  showNotice();
  const parts = (location.hash.replace(/^#\/?/, '') || 'builds').split('/').map(decodeURIComponent);
  for (const a of document.querySelectorAll('nav a')) a.removeAttribute('aria-current');
  $(parts[0] === 'deploys' ? 'nav-deploys' : 'nav-builds').setAttribute('aria-current', 'page');
  document.title = `Conveyor: ${parts.join(' ')}`;
  state.render = (view) => {
    if (parts[0] === 'deploys' && parts.length === 3) viewHistory(view, parts[1], parts[2]);
    else if (parts[0] === 'deploys') viewDeploys(view);
    else if (parts[0] === 'builds' && parts[1]) viewBuild(view, parts[1]);
    else viewBuilds(view);
  };
  refresh();
}

async function start() {
  setupToken();
  try { state.config = await api('/config.json'); } catch (e) { showAlert(e.message); }
  window.addEventListener('hashchange', () => { route(); $('main').focus(); });
  route();
}

document.addEventListener('DOMContentLoaded', start);
