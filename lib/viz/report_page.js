// The report page of `vmoe report` (docs/ROUTE.md, "vmoe report"): draws everything from
// the JSON in #vmoe-data (its shape: lib/viz/report_html.cpp). Plain JavaScript, no
// libraries, nothing fetched. State lives in `S`; every change calls render().
//
// Stable hooks for tests and scripts: .panel[data-routing], .patch[data-patch][data-token],
// .cls-cell[data-token], [data-role=dropped-tokens], #factor, #layer-select button[data-layer],
// #route-table tr[data-layer] td[data-routing] .choice[data-expert][data-kept],
// .slot[data-slot], cells' data-weight (dispatch of the selected slot), #combine-chart
// .bar[data-slot][data-weight], body[data-ready="1"] once drawn.
'use strict';
(function () {
  const D = JSON.parse(document.getElementById('vmoe-data').textContent);
  const S = { image: 0, layer: 0, factor: 0, view: 'experts', pinned: null, hover: null, slot: null };
  const GH = D.grid[0], GW = D.grid[1];
  const NP = GH * GW, NT = NP + (D.cls ? 1 : 0);
  const E = D.num_experts;
  const soft = D.mode === 'soft', topk = D.mode === 'top_k';
  const P = D.slots_per_expert;

  // --- small helpers
  const $ = (sel, root) => (root || document).querySelector(sel);
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'style') e.style.cssText = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  const fmt = (v, d) => Number(v).toFixed(d);
  const pct = (v) => (100 * v).toFixed(1) + '%';
  const shortNum = (v) => String(Math.round(v * 1000) / 1000);
  const tokenName = (t) => (D.cls && t === 0 ? 'the CLS token' : 'patch ' + patchLabel(t));
  function patchLabel(t) {
    const p = t - (D.cls ? 1 : 0);
    return `(${Math.floor(p / GW)}, ${p % GW})`;
  }
  const baseName = (path) => path.split(/[\\/]/).pop();

  // Colour maps as in the PNGs (viridis for priority, inferno for Soft-MoE weights).
  const VIRIDIS = ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58', '#b5de2b', '#fde725'];
  const INFERNO = ['#000004', '#1b0c41', '#4a0c6b', '#781c6d', '#a52c60', '#cf4446', '#ed6925', '#fb9b06', '#f7d13d', '#fcffa4'];
  function ramp(stops, v) {
    const x = Math.min(1, Math.max(0, Number.isFinite(v) ? v : 0)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    const a = parseInt(stops[i].slice(1), 16), b = parseInt(stops[i + 1].slice(1), 16);
    const mix = (s) => Math.round(((a >> s) & 255) * (1 - f) + ((b >> s) & 255) * f);
    return `rgb(${mix(16)}, ${mix(8)}, ${mix(0)})`;
  }
  const expertColour = (e) => D.palette[e] || '#777';
  const swatch = (colour) => el('span', { class: 'sw', style: `background:${colour}` });
  function routingTitle(name) {
    if (name === 'bpr') return 'BPR' + (D.priority ? ` (by ${D.priority})` : '');
    if (name === 'vanilla') return 'vanilla (token order)';
    if (name === 'experts_choice') return 'experts choose';
    if (name === 'soft') return 'Soft-MoE (no drops)';
    return name;
  }

  // --- the data of the current selection
  const runAt = (img, f, r) => D.images[img].runs[f * D.routings.length + r];
  const layerIn = (run, li) => (run && run.layers ? run.layers.find((l) => l.layer === D.layers[li]) : null);
  const shownToken = () => (S.hover !== null ? S.hover : S.pinned);

  // Choices of token t in a top-k or experts-choice layer; experts-choice lists only
  // the experts that took the token (by gate, largest first).
  function choices(L, t) {
    const out = [];
    for (let q = 0; q < L.k; ++q) {
      const c = t * L.k + q;
      out.push({ expert: L.expert[c], gate: L.gate[c], kept: L.kept[c] === '1' });
    }
    if (D.mode === 'experts_choice') return out.filter((c) => c.kept).sort((a, b) => b.gate - a.gate);
    return out;
  }
  function status(L, t) {
    let kept = 0;
    for (let q = 0; q < L.k; ++q) kept += L.kept[t * L.k + q] === '1';
    if (kept === 0) return 'dropped';
    return D.mode === 'experts_choice' || kept === L.k ? 'kept' : 'partial';
  }
  // Soft-MoE: weight of token t for slot s
  const weightAt = (arr, L, t, s) => arr[t * L.slots + s];
  function topSlots(L, t, n) {
    const w = [];
    for (let s = 0; s < L.slots; ++s) w.push([weightAt(L.combine, L, t, s), s]);
    return w.sort((a, b) => b[0] - a[0]).slice(0, n);
  }
  const slotName = (s) => (P > 1 ? `e${Math.floor(s / P)} s${s % P}` : `e${s}`);
  function entropySlots(L, t) {  // exp(H) of the combine weights: the effective number of slots
    let h = 0;
    for (let s = 0; s < L.slots; ++s) {
      const w = weightAt(L.combine, L, t, s);
      if (w > 0) h -= w * Math.log(w);
    }
    return Math.exp(h);
  }

  // --- the cells of one panel
  function paintCell(cell, L, t, scale) {
    const tint = el('div', { class: 'tint' }), mark = el('div', { class: 'mark' });
    cell.replaceChildren(tint);
    cell.classList.remove('dropped', 'partial');
    cell.removeAttribute('data-weight');
    if (!L) return;
    if (soft) {
      if (S.slot !== null) {
        const w = weightAt(L.dispatch, L, t, S.slot);
        cell.dataset.weight = String(w);
        tint.style.cssText = `background:${ramp(INFERNO, w / scale.max)};opacity:.88`;
        cell.title = `${tokenName(t)}: dispatch weight ${fmt(w, 4)} into slot ${slotName(S.slot)}`;
      } else {
        const [w, s] = topSlots(L, t, 1)[0];
        tint.style.cssText = `background:${expertColour(Math.floor(s / P))};opacity:${0.2 + 0.7 * Math.min(1, w / scale.max)}`;
        cell.append(el('span', { class: 'num', text: P > 1 ? `${Math.floor(s / P)}.${s % P}` : String(s) }));
        cell.title = `${tokenName(t)}: draws most from slot ${slotName(s)} (${fmt(w, 3)})`;
      }
      return;
    }
    const ch = choices(L, t), st = status(L, t);
    const all = [];
    for (let q = 0; q < L.k; ++q) all.push({ expert: L.expert[t * L.k + q], gate: L.gate[t * L.k + q] });
    const first = ch.length ? ch[0] : all.reduce((a, b) => (b.gate > a.gate ? b : a));
    if (S.view === 'priority' && L.score) {
      const v = (L.score[t] - scale.lo) / (scale.hi - scale.lo || 1);
      tint.style.cssText = `background:${ramp(VIRIDIS, v)};opacity:.85`;
      cell.append(el('span', { class: 'num', text: String(L.rank[t] + 1) }));
    } else {
      const a = 0.15 + 0.7 * Math.max(0, Math.min(1, (first.gate - 1 / E) / (scale.maxGate - 1 / E || 1)));
      tint.style.cssText = `background:${expertColour(first.expert)};opacity:${fmt(a, 3)}`;
      const second = ch[1];
      if (second) cell.append(el('div', { class: 'tri', style: `background:${expertColour(second.expert)}` }));
      cell.append(el('span', { class: 'num', text: String(first.expert) }));
    }
    if (st !== 'kept') cell.classList.add(st);
    cell.append(mark);
    const words = ch.map((c) => `e${c.expert} ${fmt(c.gate, 3)}${c.kept ? '' : ' dropped'}`).join(', ');
    cell.title = `${tokenName(t)}: ${st}; ${words || 'no expert'}` + (L.rank ? `; BPR rank ${L.rank[t] + 1}` : '');
  }

  function cellScale(L) {
    const s = { maxGate: 1 / E, lo: 0, hi: 1, max: 1e-12 };
    if (!L) return s;
    if (soft) {
      for (let t = 0; t < NT; ++t)
        s.max = Math.max(s.max, S.slot !== null ? weightAt(L.dispatch, L, t, S.slot) : topSlots(L, t, 1)[0][0]);
      return s;
    }
    if (L.score) {
      s.lo = Math.min(...L.score);
      s.hi = Math.max(...L.score);
    }
    for (let t = 0; t < NT; ++t) s.maxGate = Math.max(s.maxGate, L.gate[t * L.k]);
    return s;
  }

  function cellSize() {
    return Math.max(22, Math.min(56, Math.floor(340 / Math.max(GH, GW))));
  }

  function buildPanel(r) {
    const img = D.images[S.image];
    const run = runAt(S.image, S.factor, r);
    const L = layerIn(run, S.layer);
    const name = D.routings[r];
    const px = cellSize();
    const fig = el('figure', { class: 'panel', 'data-routing': name });
    fig.append(el('h3', { text: routingTitle(name) }));
    if (run.error) {
      fig.append(el('p', { class: 'error', 'data-role': 'error', text: 'cannot run: ' + run.error }));
      return fig;
    }
    const scale = cellScale(L);
    const grid = el('div', {
      class: 'patch-grid', role: 'grid', 'aria-label': `${GH} x ${GW} patches`,
      style: `grid-template-columns:repeat(${GW},${px}px);grid-auto-rows:${px}px;background-image:url("${img.src}")`,
    });
    for (let p = 0; p < NP; ++p) {
      const t = p + (D.cls ? 1 : 0);
      const cell = el('div', { class: 'patch', role: 'gridcell', 'data-patch': p, 'data-token': t });
      paintCell(cell, L, t, scale);
      grid.append(cell);
    }
    const row = el('div', { class: 'row' });
    if (D.cls) {
      const cell = el('div', { class: 'cls-cell', 'data-token': 0, style: `width:${px}px;height:${px}px` });
      paintCell(cell, L, 0, scale);
      row.append(el('div', { class: 'cls-wrap' }, cell, el('span', { text: 'CLS' })));
    }
    row.append(grid);
    const top = el('ul', { class: 'top', 'aria-label': 'predicted classes' });
    for (const c of run.top)
      top.append(el('li', { 'data-class': c.index },
        el('span', { text: c.label }), el('span', { text: pct(c.prob) }),
        el('span', { class: 'bar' }, el('i', { style: `width:${100 * c.prob}%` }))));
    row.append(top);
    fig.append(row);
    if (L && !soft) {
      const counts = el('p', { class: 'counts' },
        'dropped tokens ', el('b', { 'data-role': 'dropped-tokens', text: String(L.dropped_tokens) }), ` of ${L.tokens}`);
      if (topk)
        counts.append(' · dropped choices ', el('b', { 'data-role': 'dropped-choices', text: String(L.dropped_choices) }),
          ` of ${L.tokens * L.k} · partly dropped `, el('b', { 'data-role': 'partial-tokens', text: String(L.partial_tokens) }));
      counts.append(el('br'), 'capacity ', el('b', { 'data-role': 'capacity', text: String(L.capacity) }),
        ` per expert (factor ${shortNum(run.capacity_factor)} asked, ${fmt(L.effective_capacity_factor, 2)} effective)`);
      fig.append(counts);
    } else if (L) {
      fig.append(el('p', { class: 'counts', text: `${L.slots} slots (${E} experts x ${P}); nothing is dropped` }));
    }
    return fig;
  }

  // --- route of the shown patch through every MoE layer
  function renderRoute() {
    const t = shownToken();
    const table = $('#route-table');
    $('#route-token').textContent = t === null ? 'a patch (hover or click one)' : tokenName(t);
    const head = el('tr', {}, el('th', { text: 'layer' }));
    if (soft) head.append(el('th', { text: 'largest combine weights (slot: weight)' }), el('th', { text: 'effective slots' }));
    else for (const name of D.routings) head.append(el('th', { 'data-routing': name, text: routingTitle(name) }));
    const rows = [el('thead', {}, head)];
    const body = el('tbody');
    D.layers.forEach((layer, li) => {
      const tr = el('tr', { 'data-layer': layer, class: li === S.layer ? 'current' : null, onclick: () => setLayer(li) });
      tr.append(el('th', { text: 'L' + layer }));
      if (soft) {
        const L = layerIn(runAt(S.image, 0, 0), li);
        const td = el('td', { 'data-routing': D.routings[0] });
        if (t !== null && L)
          for (const [w, s] of topSlots(L, t, 3))
            td.append(el('span', { class: 'choice', 'data-slot': s }, swatch(expertColour(Math.floor(s / P))), `${slotName(s)}: ${fmt(w, 3)}`));
        tr.append(td, el('td', { text: t !== null && L ? fmt(entropySlots(L, t), 1) : '' }));
      } else {
        D.routings.forEach((name, r) => {
          const run = runAt(S.image, S.factor, r), L = layerIn(run, li);
          const td = el('td', { 'data-routing': name });
          if (t !== null && L) {
            choices(L, t).forEach((c, q) =>
              td.append(el('span', { class: 'choice', 'data-choice': q, 'data-expert': c.expert, 'data-kept': c.kept ? 1 : 0 },
                swatch(expertColour(c.expert)), `e${c.expert} ${fmt(c.gate, 3)}${c.kept ? '' : ' dropped'}`)));
            const st = status(L, t);
            td.append(el('span', { class: 'status-' + st, 'data-role': 'status', text: st === 'partial' ? 'half dropped' : st }));
            if (L.rank) td.append(` · rank ${L.rank[t] + 1} of ${L.tokens} (score ${fmt(L.score[t], 3)})`);
          } else if (run.error) td.append('cannot run');
          tr.append(td);
        });
      }
      body.append(tr);
    });
    rows.push(body);
    table.replaceChildren(...rows);
    for (const cell of document.querySelectorAll('#panels .patch, #panels .cls-cell'))
      cell.classList.toggle('selected', t !== null && Number(cell.dataset.token) === t);
    if (soft) renderCombine();
  }

  // --- Soft-MoE: slots, dispatch of a slot, combine of a patch
  function renderSlots() {
    const L = layerIn(runAt(S.image, 0, 0), S.layer);
    const box = $('#slots');
    box.style.gridTemplateColumns = `repeat(${Math.min(P, 8)}, auto)`;
    const buttons = [];
    if (L)
      for (let s = 0; s < L.slots; ++s) {
        let used = 0;
        for (let t = 0; t < NT; ++t) used += weightAt(L.combine, L, t, s);
        buttons.push(el('button', {
          class: 'slot', 'data-slot': s, 'aria-pressed': S.slot === s ? 'true' : 'false',
          title: `slot ${slotName(s)}: tokens draw ${fmt(used, 2)} of their combine weight from it`,
          onclick: () => { S.slot = S.slot === s ? null : s; render(); },
        }, swatch(expertColour(Math.floor(s / P))), slotName(s)));
      }
    box.replaceChildren(...buttons);
    const info = $('#slot-info');
    if (S.slot === null || !L) {
      info.textContent = 'No slot selected: each patch is tinted with the expert of the slot it draws most from.';
      return;
    }
    let sum = 0, max = 0;
    for (let t = 0; t < NT; ++t) {
      const w = weightAt(L.dispatch, L, t, S.slot);
      sum += w;
      max = Math.max(max, w);
    }
    info.replaceChildren(`Slot ${slotName(S.slot)} reads the dispatch-weighted mix of the ${NT} tokens: weights sum to `,
      el('b', { id: 'weights-sum', text: fmt(sum, 4) }), `, largest ${fmt(max, 4)} (an even mix would give ${fmt(1 / NT, 4)} each)` +
      (D.cls ? `, the CLS token ${fmt(weightAt(L.dispatch, L, 0, S.slot), 4)}.` : '.'));
  }

  function renderCombine() {
    const L = layerIn(runAt(S.image, 0, 0), S.layer);
    const t = shownToken();
    const chart = $('#combine-chart'), info = $('#combine-info');
    if (t === null || !L) {
      chart.replaceChildren();
      info.textContent = 'Click a patch: its output is the combine-weighted sum of all slot outputs.';
      return;
    }
    let sum = 0, max = 1e-12;
    for (let s = 0; s < L.slots; ++s) {
      sum += weightAt(L.combine, L, t, s);
      max = Math.max(max, weightAt(L.combine, L, t, s));
    }
    const cols = [];
    for (let s = 0; s < L.slots; ++s) {
      const w = weightAt(L.combine, L, t, s);
      cols.push(el('div', { class: 'bar-col', title: `${slotName(s)}: ${fmt(w, 4)}` },
        el('div', { class: 'bar', 'data-slot': s, 'data-weight': w, style: `height:${(100 * w) / max}%;background:${expertColour(Math.floor(s / P))}` })));
    }
    chart.replaceChildren(...cols);
    info.replaceChildren(`${tokenName(t)}, layer ${D.layers[S.layer]}: combine weights over ${L.slots} slots (bars, coloured by expert) sum to `,
      el('b', { id: 'combine-sum', text: fmt(sum, 4) }), `; effective number of slots ${fmt(entropySlots(L, t), 1)}.`);
  }

  // --- per-layer summary and expert load
  function renderSummary() {
    const head = el('tr', {}, el('th', { text: 'layer' }));
    const body = el('tbody');
    if (soft) {
      head.append(el('th', { text: 'busiest slot (combine weight drawn)' }), el('th', { text: 'mean effective slots per token' }));
      D.layers.forEach((layer, li) => {
        const L = layerIn(runAt(S.image, 0, 0), li);
        let best = [0, 0], eff = 0;
        if (L) {
          for (let s = 0; s < L.slots; ++s) {
            let used = 0;
            for (let t = 0; t < NT; ++t) used += weightAt(L.combine, L, t, s);
            if (used > best[0]) best = [used, s];
          }
          for (let t = 0; t < NT; ++t) eff += entropySlots(L, t) / NT;
        }
        body.append(el('tr', { 'data-layer': layer, class: li === S.layer ? 'current' : null, onclick: () => setLayer(li) },
          el('th', { text: 'L' + layer }), el('td', { text: L ? `${slotName(best[1])}: ${fmt(best[0], 2)}` : '' }),
          el('td', { text: L ? fmt(eff, 1) : '' })));
      });
    } else {
      for (const name of D.routings) head.append(el('th', { text: routingTitle(name) + ': dropped tokens' + (topk ? ' / choices' : '') }));
      head.append(el('th', { text: 'capacity per expert' }));
      D.layers.forEach((layer, li) => {
        const tr = el('tr', { 'data-layer': layer, class: li === S.layer ? 'current' : null, onclick: () => setLayer(li) },
          el('th', { text: 'L' + layer }));
        let cap = '';
        D.routings.forEach((name, r) => {
          const run = runAt(S.image, S.factor, r), L = layerIn(run, li);
          tr.append(el('td', { 'data-routing': name, 'data-role': 'layer-dropped' },
            L ? `${L.dropped_tokens} of ${L.tokens}` + (topk ? ` / ${L.dropped_choices} of ${L.tokens * L.k}` : '') : 'cannot run'));
          if (L) cap = `${L.capacity} (effective factor ${fmt(L.effective_capacity_factor, 2)})`;
        });
        tr.append(el('td', { text: cap }));
        body.append(tr);
      });
    }
    $('#summary-table').replaceChildren(el('thead', {}, head), body);

    // Bar charts of the current layer: kept choices per expert (solid), all the choices
    // that wanted it (dashed), the capacity (dotted red line).
    const charts = [];
    const columns = soft ? [0] : D.routings.map((_, r) => r);
    for (const r of columns) {
      const run = runAt(S.image, soft ? 0 : S.factor, r), L = layerIn(run, S.layer);
      if (!L) continue;
      const want = L.demand || L.load;
      const top = Math.max(1e-9, ...want, ...L.load, soft ? 0 : L.capacity);
      const bars = el('div', { class: 'bars', 'data-routing': D.routings[r] });
      for (let e = 0; e < E; ++e) {
        const col = el('div', { class: 'bar-col', title: soft ? `e${e}: ${fmt(L.load[e], 2)}` : `e${e}: ${L.load[e]} kept of ${want[e]} wanted` });
        if (L.demand && want[e] > L.load[e]) col.append(el('div', { class: 'want', style: `height:calc((100% - 14px) * ${(want[e] - L.load[e]) / top})` }));
        col.append(el('div', { class: 'bar', 'data-expert': e, 'data-load': L.load[e], style: `height:calc((100% - 14px) * ${L.load[e] / top});background:${expertColour(e)}` }));
        col.append(el('span', { text: 'e' + e }));
        bars.append(col);
      }
      if (!soft && L.capacity) bars.append(el('div', { class: 'cap-line', style: `bottom:calc((100% - 14px) * ${L.capacity / top} + 16px)`, title: `capacity ${L.capacity}` }));
      const title = soft ? `layer ${D.layers[S.layer]}: combine weight drawn from each expert's slots (sums to ${NT})`
        : `${routingTitle(D.routings[r])}, layer ${D.layers[S.layer]}: kept choices per expert (dashed: dropped ones; dotted line: capacity ${L.capacity})`;
      charts.push(el('div', {}, el('p', { class: 'chart-title', text: title }), bars));
    }
    $('#load-charts').replaceChildren(...charts);
  }

  function renderLegend() {
    const items = [];
    for (let e = 0; e < E; ++e) items.push(el('span', { class: 'item' }, swatch(expertColour(e)), 'e' + e));
    if (soft) {
      items.push(el('span', { class: 'item' }, 'cell: expert of the slot a patch draws most from (number: expert.slot), opacity by that weight'));
      items.push(el('span', { class: 'item' }, 'dispatch weight, 0 to the slot\'s largest', el('span', { class: 'ramp', style: `background:linear-gradient(to right,${INFERNO.join(',')})` })));
    } else {
      items.push(el('span', { class: 'item' }, 'cell: first-choice expert (number), opacity = its gate (faint 1/E, solid = largest); corner: second choice'));
      items.push(el('span', { class: 'item' }, el('span', { class: 'sw', style: 'background:#999;background-image:linear-gradient(45deg,transparent 40%,#d62728 40%,#d62728 60%,transparent 60%)' }), 'grey + cross: dropped (no expert)'));
      if (topk) items.push(el('span', { class: 'item' }, el('span', { class: 'sw', style: 'background:linear-gradient(to top left,transparent 50%,#999 50%)' }), 'half grey: half dropped (a choice lost)'));
      if (topk) items.push(el('span', { class: 'item' }, 'BPR priority (score, number = rank)', el('span', { class: 'ramp', style: `background:linear-gradient(to right,${VIRIDIS.join(',')})` })));
    }
    $('#legend').replaceChildren(...items);
  }

  function renderHead() {
    const img = D.images[S.image];
    let fg = 0;
    for (const f of img.foreground) fg += f;
    $('#image-head').replaceChildren(el('span', { class: 'name', text: baseName(img.path) }),
      el('span', { class: 'hint', text: `${img.path} · model input ${D.input[1]}x${D.input[0]}, ${GH}x${GW} patches${D.cls ? ' + CLS' : ''}, ${fg} foreground` }));
  }

  function renderControls() {
    for (const b of document.querySelectorAll('#layer-select button')) b.setAttribute('aria-pressed', Number(b.dataset.index) === S.layer ? 'true' : 'false');
    for (const b of document.querySelectorAll('#factor-ticks button')) b.setAttribute('aria-pressed', Number(b.dataset.index) === S.factor ? 'true' : 'false');
    for (const b of document.querySelectorAll('#images .thumb')) b.setAttribute('aria-pressed', Number(b.dataset.image) === S.image ? 'true' : 'false');
    const slider = $('#factor');
    slider.value = String(S.factor);
    slider.setAttribute('aria-valuetext', `capacity factor ${shortNum(D.factors[S.factor])}`);
  }

  function render() {
    if (!D.images.length) return;
    renderControls();
    renderHead();
    $('#panels').replaceChildren(...D.routings.map((_, r) => buildPanel(r)));
    if (soft) renderSlots();
    renderRoute();
    renderSummary();
  }

  // --- state changes
  function setLayer(li) {
    S.layer = Math.max(0, Math.min(D.layers.length - 1, li));
    render();
  }
  function setFactor(f) {
    S.factor = Math.max(0, Math.min(D.factors.length - 1, f));
    render();
  }
  function setImage(i) {
    S.image = (i + D.images.length) % D.images.length;
    S.pinned = S.hover = null;
    render();
  }

  // --- one-time setup
  function setup() {
    const model = baseName(D.model);
    document.title = `vmoe report: ${model}`;
    $('#model-name').textContent = model;
    const words = [`${D.router_phrase || D.router}`, `MoE layers ${D.layers.join(', ')}`,
      `${D.images.length} image${D.images.length === 1 ? '' : 's'}`];
    if (!soft) words.push(`capacity factors ${D.factors.map(shortNum).join(', ')}`);
    words.push('each image routed on its own (as vmoe route)');
    $('#model-line').textContent = words.join(' · ');
    if (D.failures.length) {
      const f = $('#failures');
      f.hidden = false;
      f.textContent = `Left out (${D.failures.length}): ` + D.failures.map((x) => x.error).join(' | ');
    }
    $('#images').replaceChildren(...D.images.map((img, i) => {
      const run = runAt(i, 0, 0);
      const label = run.top && run.top.length ? run.top[0].label : '';
      return el('button', { class: 'thumb', 'data-image': i, title: img.path, onclick: () => setImage(i) },
        el('img', { src: img.src, alt: baseName(img.path) }), el('span', { text: baseName(img.path) }), el('span', { text: label }));
    }));
    $('#layer-select').replaceChildren(...D.layers.map((layer, li) =>
      el('button', { 'data-layer': layer, 'data-index': li, title: `encoder block ${layer}`, onclick: () => setLayer(li) }, 'L' + layer)));
    const slider = $('#factor');
    slider.max = String(D.factors.length - 1);
    slider.addEventListener('input', () => setFactor(Number(slider.value)));
    $('#factor-ticks').replaceChildren(...D.factors.map((f, i) =>
      el('button', { 'data-index': i, 'data-factor': f, onclick: () => setFactor(i) }, shortNum(f))));
    $('#factor-control').hidden = D.factors.length < 2;
    $('#view-control').hidden = !topk;
    $('#soft').hidden = !soft;
    if (soft) $('#load-title').textContent = 'Combine weight per expert';
    for (const radio of document.querySelectorAll('input[name=view]'))
      radio.addEventListener('change', () => { S.view = radio.value; render(); });

    const panels = $('#panels');
    const tokenOf = (target) => {
      const cell = target.closest ? target.closest('.patch, .cls-cell') : null;
      return cell ? Number(cell.dataset.token) : null;
    };
    panels.addEventListener('mouseover', (ev) => {
      const t = tokenOf(ev.target);
      if (t !== null && t !== S.hover) { S.hover = t; renderRoute(); }
    });
    panels.addEventListener('mouseleave', () => { S.hover = null; renderRoute(); });
    panels.addEventListener('click', (ev) => {
      const t = tokenOf(ev.target);
      if (t === null) return;
      S.pinned = S.pinned === t ? null : t;
      renderRoute();
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const keys = {
        ArrowLeft: () => setFactor(S.factor - 1), ArrowRight: () => setFactor(S.factor + 1),
        ArrowUp: () => setLayer(S.layer - 1), ArrowDown: () => setLayer(S.layer + 1),
        n: () => setImage(S.image + 1), p: () => setImage(S.image - 1),
        Escape: () => { S.pinned = null; S.slot = null; render(); },
      };
      const act = keys[ev.key];
      if (!act) return;
      ev.preventDefault();
      act();
    });
    renderLegend();
    if (!D.images.length) $('#view').replaceChildren(el('p', { class: 'error', text: 'No image could be used.' }));
  }

  setup();
  render();
  document.body.dataset.ready = '1';
})();
