// The live demo page: a catalog grid for one user, whose clicks are posted as events, and a
// recommendations panel that follows them. Plain JavaScript, no dependencies, no build step.
//
// How the panel learns about a click:
//  * cart and buy ("purchase") are high-intent events: the gateway pushes the user's refreshed
//    recommendations on the SSE stream (/v1/users/{id}/push) once the event is in the feature
//    store. The page shows the push whose trigger is the click's event_id.
//  * view pushes nothing, so after a view the page refetches /recommendations every 100 ms until
//    features_updated_at_ms moves past the value shown before the click (at most 5 s).
//  * cart/buy also fall back to that refetch when no push came within 2 s: pushes are
//    frequency-capped (one per user per PUSH_MIN_INTERVAL_MS, 10 s by default).
// Viewing an item also shows the items most like it (/v1/items/{id}/similar, without the user's
// bought items); a model repository without similar items (501), an item the served catalog does
// not know (404) or a failure is a one-line note in that panel instead of a list.
// Freshness: milliseconds from the click to the panel showing the new recommendations (measured
// here), and from the click to the feature store's write (features_updated_at_ms) and to the push
// (pushed_at_ms); the last two compare this browser's clock with the gateway's.
"use strict";

const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const K = 10;
const SIMILAR_K = 6;
const PAGE_SIZE = 20;
const PUSHED_TYPES = new Set(["cart", "purchase"]);
const params = new URLSearchParams(location.search);
// How long to wait for a push, and for a view to reach the features: budgets for a person
// watching, which a slow or loaded machine (or a test) can lengthen: ?push_wait_ms=&poll_for_ms=
const msParam = (name, fallback) => {
  const value = Number(params.get(name));
  return Number.isFinite(value) && value > 0 ? value : fallback;
};
const PUSH_WAIT_MS = msParam("push_wait_ms", 2000);
const POLL_EVERY_MS = 100;
const POLL_FOR_MS = msParam("poll_for_ms", 5000);
const LABELS = { view: "view", cart: "add to cart", purchase: "buy" };

const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  user: params.get("user") || "1",
  offset: 0,
  category: "",
  total: 0,
  recs: null, // the recommendations on screen
  clicks: new Map(), // event_id -> click
  posting: 0, // event POSTs in flight
  early: new Map(), // pushes whose trigger we have not heard back about yet
  similarFor: 0, // the latest view's number: a slower answer to an earlier view is dropped
};

// --- small helpers ------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // never innerHTML: titles are data
  return node;
}

function log(message, className) {
  const line = el("li", className, `${new Date().toLocaleTimeString()}  ${message}`);
  $("#log").prepend(line);
  while ($("#log").children.length > 50) $("#log").lastChild.remove();
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
  }
  return body;
}

const userPath = () => `/v1/users/${encodeURIComponent(state.user)}`;
const ms = (value) => `${Math.round(value)} ms`;

// --- the catalog grid ---------------------------------------------------------------------------

function card(item) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.dataset.itemId = item.item_id;
  node.dataset.title = item.title;
  node.querySelector(".title").textContent = item.title;
  node.querySelector(".cats").textContent =
    [item.categories.join(", "), item.year].filter(Boolean).join(" · ");
  return node;
}

async function loadCatalog() {
  const query = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE });
  if (state.category) query.set("category", state.category);
  const page = await api(`/v1/catalog?${query}`);
  const select = $("#category");
  if (select.options.length === 1) {
    for (const category of page.categories) select.add(new Option(category, category));
  }
  state.total = page.total;
  $("#grid").replaceChildren(...page.items.map(card));
  const last = state.offset + page.items.length;
  $("#page-info").textContent = page.total ? `${state.offset + 1}–${last} of ${page.total}` : "no items";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = last >= page.total;
}

// --- the recommendations panel ------------------------------------------------------------------

function recItem(item, entered) {
  const node = card({ ...item, year: null });
  const li = el("li", entered ? "entered" : "");
  li.dataset.itemId = item.item_id;
  li.dataset.title = item.title;
  const score = item.score === null ? "" : `score ${item.score.toFixed(3)}`;
  li.append(node.querySelector(".title"), node.querySelector(".cats"), el("div", "score", score),
    node.querySelector(".actions"));
  return li;
}

function renderRecs(recs, origin) {
  const before = state.recs ? state.recs.items : null;
  const ids = new Set(recs.items.map((item) => item.item_id));
  const old = new Set(before ? before.map((item) => item.item_id) : []);
  const entered = before ? recs.items.filter((item) => !old.has(item.item_id)) : [];
  const left = before ? before.filter((item) => !ids.has(item.item_id)) : [];
  const enteredIds = new Set(entered.map((item) => item.item_id));

  $("#recs").replaceChildren(...recs.items.map((item) => recItem(item, enteredIds.has(item.item_id))));

  const meta = $("#rec-meta");
  meta.replaceChildren(`${recs.source} · model v${recs.model_version} · via ${origin}`);
  for (const flag of ["cold_start", "degraded"]) {
    if (recs[flag]) meta.append(" · ", el("span", "flag", flag.replace("_", " ")));
  }
  if (recs.features_updated_at_ms !== null && recs.features_updated_at_ms !== undefined) {
    meta.append(` · features written ${ms(Date.now() - recs.features_updated_at_ms)} ago`);
  }

  const changes = $("#changes");
  changes.replaceChildren();
  if (before) {
    if (!entered.length && !left.length) changes.append("no change in the top " + recs.items.length);
    for (const item of entered) changes.append(el("div", "in", `+ ${item.title}`));
    for (const item of left) changes.append(el("div", "out", `− ${item.title}`));
  }
  const panel = $("#recs-panel");
  panel.dataset.updates = String(Number(panel.dataset.updates) + 1);
  panel.dataset.origin = origin;
  state.recs = recs;
  return { entered, left };
}

function showFreshness(click, recs, origin, pushedAtMs) {
  const onScreen = performance.now() - click.t0;
  const box = $("#freshness");
  box.replaceChildren(el("strong", "", ms(onScreen)),
    ` from “${LABELS[click.type]}” on ${click.title} to this panel (${origin})`);
  const parts = [`event accepted +${ms(click.acceptedAfter)}`];
  if (recs.features_updated_at_ms !== null && recs.features_updated_at_ms !== undefined) {
    parts.push(`features written +${ms(recs.features_updated_at_ms - click.clickedAtMs)}`);
  }
  if (pushedAtMs !== undefined) parts.push(`pushed +${ms(pushedAtMs - click.clickedAtMs)}`);
  box.append(el("div", "", parts.join(" · ")));
  Object.assign(box.dataset, {
    ms: String(Math.round(onScreen)), eventId: click.eventId, eventType: click.type,
    itemId: click.itemId, origin,
  });
  box.hidden = false;
}

function resolve(click, recs, origin, pushedAtMs) {
  const sameItems = state.recs &&
    state.recs.items.map((i) => i.item_id).join() === recs.items.map((i) => i.item_id).join();
  if (click.done) { // the refetch won; the (capped or slow) push came later
    log(`push for ${LABELS[click.type]} ${click.title} came too, ${ms(performance.now() - click.t0)} after the click`);
    if (!sameItems) renderRecs(recs, origin);
    return;
  }
  click.done = true;
  const { entered, left } = renderRecs(recs, origin);
  showFreshness(click, recs, origin, pushedAtMs);
  log(`recommendations after ${LABELS[click.type]} ${click.title}: ${entered.length} in, ` +
      `${left.length} out, ${ms(performance.now() - click.t0)} (${origin})`);
}

async function refetchUntilVisible(click, origin) {
  const until = performance.now() + POLL_FOR_MS;
  while (!click.done && performance.now() < until) {
    try {
      const recs = await api(`${userPath()}/recommendations?k=${K}`);
      const updated = recs.features_updated_at_ms;
      if (!click.done && updated !== null && updated !== undefined &&
          (click.baseline === null || updated > click.baseline)) {
        resolve(click, recs, origin);
        return;
      }
    } catch (error) {
      log(`recommendations: ${error.message}`, "error");
    }
    await sleep(POLL_EVERY_MS);
  }
  if (!click.done) log(`${LABELS[click.type]} ${click.title}: not in the features after ${POLL_FOR_MS} ms`, "error");
}

// --- similar items for the item being viewed -------------------------------------------------

// What a failed similar-items request means to someone looking at the page: [state, note].
function similarProblem(status, message) {
  if (status === 501) return ["not-served", "No similar items: the served model predates them (re-export to get them)."];
  if (status === 404) return ["not-found", "No similar items: this item is not in the served model's catalog."];
  return ["error", `Similar items unavailable right now (${message}).`];
}

async function showSimilar(itemId, title) {
  const mine = ++state.similarFor;
  const panel = $("#similar-panel");
  Object.assign(panel.dataset, { itemId, state: "loading" });
  panel.hidden = false;
  $("#similar-of").textContent = title;
  $("#similar-meta").replaceChildren("loading…");
  const query = new URLSearchParams({ k: SIMILAR_K, user_id: state.user });
  let body = null;
  let problem = null;
  try {
    const response = await fetch(`/v1/items/${encodeURIComponent(itemId)}/similar?${query}`);
    body = await response.json().catch(() => null);
    if (!response.ok || !body || !Array.isArray(body.items)) {
      const message = (body && body.error && body.error.message) || `HTTP ${response.status}`;
      problem = similarProblem(response.status, message);
    }
  } catch (error) { // the gateway is unreachable
    problem = similarProblem(0, error.message);
  }
  if (mine !== state.similarFor) return;
  const note = $("#similar-note");
  if (problem) {
    $("#similar").replaceChildren();
    $("#similar-meta").replaceChildren();
    note.textContent = problem[1];
    note.hidden = false;
    panel.dataset.state = problem[0];
    log(`similar to ${title}: ${problem[1]}`, "error");
    return;
  }
  $("#similar").replaceChildren(...body.items.map((item) => recItem(item, false)));
  const meta = $("#similar-meta");
  meta.replaceChildren(`${body.source} · model v${body.model_version} · without your purchases`);
  note.hidden = !body.degraded;
  if (body.degraded) {
    meta.append(" · ", el("span", "flag", "degraded"));
    // degraded model answers are the ones whose user's purchases could not be read
    note.textContent = body.source === "model"
      ? "Your purchases could not be read: some of these may be items you bought."
      : "The model did not answer in time: popular items in the same categories instead.";
  }
  panel.dataset.state = body.degraded ? "degraded" : "ok";
}

// --- clicks -> events ---------------------------------------------------------------------------

async function act(action, itemId, title, cardNode) {
  const click = {
    type: action, itemId, title, t0: performance.now(), clickedAtMs: Date.now(), done: false,
    baseline: state.recs ? (state.recs.features_updated_at_ms ?? null) : null,
  };
  document.querySelectorAll(".acted").forEach((node) => node.classList.remove("acted"));
  if (cardNode) cardNode.classList.add("acted");
  if (action === "view") showSimilar(itemId, title); // independent of the event's fate
  state.posting += 1;
  let accepted;
  try {
    accepted = await api("/v1/events", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: state.user, item_id: itemId, event_type: action }),
    });
  } catch (error) {
    log(`${LABELS[action]} ${title}: ${error.message}`, "error");
    return;
  } finally {
    state.posting -= 1;
  }
  click.eventId = accepted.event_id;
  click.acceptedAfter = performance.now() - click.t0;
  state.clicks.set(click.eventId, click);
  log(`${LABELS[action]} ${title} → accepted in ${ms(click.acceptedAfter)}`);
  const early = state.early.get(click.eventId);
  if (early) {
    state.early.delete(click.eventId);
    resolve(click, early.recommendations, "SSE push", early.pushed_at_ms);
  } else if (PUSHED_TYPES.has(action)) {
    setTimeout(() => {
      if (!click.done) refetchUntilVisible(click, "refetch, no push within 2 s");
    }, PUSH_WAIT_MS);
  } else {
    refetchUntilVisible(click, "refetch");
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  const holder = button && button.closest("[data-item-id]");
  if (holder) act(button.dataset.action, holder.dataset.itemId, holder.dataset.title, holder);
});

// --- the push stream ----------------------------------------------------------------------------

function connectPush() {
  const status = $("#stream-status");
  const source = new EventSource(`${userPath()}/push`);
  source.onopen = () => {
    status.dataset.state = "connected";
    status.textContent = "push stream: connected";
  };
  source.onerror = () => { // EventSource reconnects by itself
    status.dataset.state = "error";
    status.textContent = "push stream: reconnecting…";
  };
  source.addEventListener("recommendations", (event) => {
    const message = JSON.parse(event.data);
    if (message.user_id !== state.user) return;
    const click = state.clicks.get(message.trigger.event_id);
    if (click) {
      resolve(click, message.recommendations, "SSE push", message.pushed_at_ms);
    } else if (state.posting > 0) { // our POST's answer has not come back yet
      state.early.set(message.trigger.event_id, message);
    } else {
      renderRecs(message.recommendations, "SSE push");
      log(`push after a ${message.trigger.event_type} posted elsewhere (item ${message.trigger.item_id})`);
    }
  });
}

// --- start --------------------------------------------------------------------------------------

async function start() {
  $("#user").value = state.user;
  $("#rec-user").textContent = state.user;
  $("#user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("#user").value.trim();
    if (ID_PATTERN.test(user)) location.search = `?user=${encodeURIComponent(user)}`;
  });
  $("#category").addEventListener("change", () => {
    state.category = $("#category").value;
    state.offset = 0;
    loadCatalog().catch((error) => log(`catalog: ${error.message}`, "error"));
  });
  for (const [id, step] of [["#prev", -PAGE_SIZE], ["#next", PAGE_SIZE]]) {
    $(id).addEventListener("click", () => {
      state.offset = Math.max(0, state.offset + step);
      loadCatalog().catch((error) => log(`catalog: ${error.message}`, "error"));
    });
  }
  if (!ID_PATTERN.test(state.user)) {
    log(`invalid user id ${JSON.stringify(state.user)}: letters, digits and _.:- only, at most 64`, "error");
    return;
  }
  connectPush();
  const [catalog, recs] = await Promise.allSettled([
    loadCatalog(), api(`${userPath()}/recommendations?k=${K}`)]);
  if (catalog.status === "rejected") log(`catalog: ${catalog.reason.message}`, "error");
  if (recs.status === "rejected") log(`recommendations: ${recs.reason.message}`, "error");
  else renderRecs(recs.value, "GET");
}

start();
