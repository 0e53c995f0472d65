"use strict";
(function () {
  const meta = (name) => document.querySelector('meta[name="' + name + '"]').content;
  const TOKEN = meta("llm-gym-token");
  const DEFAULT_LABELLER = meta("llm-gym-labeller");
  if (location.search) history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  const $ = (id) => document.getElementById(id);
  const body = document.body;

  let session = sessionStorage.getItem("llm_gym_session");
  if (!session) {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    session = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("llm_gym_session", session);
  }
  const nameInput = $("labeller");
  nameInput.value = localStorage.getItem("llm_gym_labeller") || DEFAULT_LABELLER;
  nameInput.addEventListener("change", () => localStorage.setItem("llm_gym_labeller", nameInput.value.trim()));

  let current = null;   // the leased query
  let order = [];       // K-way: completion indices picked so far, best first
  let busy = false;
  let timer = null;
  let shownAt = 0;      // when the current query was shown: keys are ignored for KEY_GUARD_MS after
  const KEY_GUARD_MS = 150;

  async function api(method, path, payload) {
    const options = { method, headers: { "X-LLM-Gym-Token": TOKEN }, cache: "no-store", credentials: "same-origin" };
    if (payload !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      throw new Error("Cannot reach the labelling server. Try again: an answer is never stored twice.");
    }
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const err = new Error(data.error || ("HTTP " + response.status));
      err.status = response.status;
      throw err;
    }
    return data;
  }

  function say(text, kind) {
    const s = $("status");
    s.textContent = text;
    s.className = kind || "";
  }

  function showProgress(p, mine) {
    let text = "answered " + p.answered + " · pending " + p.pending;
    const others = p.labelling - (mine ? 1 : 0);
    if (others > 0) text += " (" + others + " being labelled by others)";
    $("progress").textContent = text;
  }

  async function next() {
    clearTimeout(timer);
    body.dataset.state = "loading";
    try {
      const d = await api("POST", "/api/next", { session, labeller: nameInput.value.trim() || DEFAULT_LABELLER });
      showProgress(d.progress, !d.done);
      current = d.done ? null : d;
      order = [];
      render();
      if (!current) timer = setTimeout(next, 3000);
    } catch (e) {
      body.dataset.state = "error";
      say(e.message, "error");
      timer = setTimeout(next, 5000);
    }
  }

  function render() {
    $("query").hidden = !current;
    $("done").hidden = !!current;
    if (!current) {
      $("query").removeAttribute("data-query-id");
      body.dataset.state = "done";
      return;
    }
    const q = current;
    const pair = q.k === 2;
    shownAt = performance.now();
    $("query").dataset.queryId = q.query_id;
    $("prompt").textContent = q.prompt;
    $("instructions").textContent = pair
      ? "Which completion is better? Click it or press 1 or 2; t = tie, s = skip."
      : "Rank the " + q.k + " completions: click them (or type their numbers) best first, then Enter. " +
        "Backspace undoes, s skips.";
    const box = $("completions");
    box.className = "completions" + (pair ? " pair" : "");
    box.replaceChildren();
    q.completions.forEach((text, i) => {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.index = String(i);
      const head = document.createElement("div");
      head.className = "card-head";
      const key = document.createElement("span");
      key.className = "card-key";
      key.textContent = pair ? (i === 0 ? "1 · first" : "2 · second") : String(i + 1);
      const rank = document.createElement("span");
      rank.className = "card-rank";
      head.append(key, rank);
      const content = document.createElement("div");
      content.className = "text completion";
      content.textContent = text;   // text, never HTML: markup in a completion is shown, not run
      card.append(head, content);
      card.addEventListener("click", () => (pair ? choose(i === 0 ? "first" : "second") : pick(i)));
      box.append(card);
    });
    $("pair-actions").hidden = !pair;
    $("rank-actions").hidden = pair;
    showRanking();
    setBusy(false);
    body.dataset.state = "query";
  }

  function showRanking() {
    if (!current || current.k === 2) return;
    document.querySelectorAll("#completions .card").forEach((card) => {
      const position = order.indexOf(Number(card.dataset.index));
      card.classList.toggle("ranked", position >= 0);
      card.querySelector(".card-rank").textContent = position >= 0 ? "#" + (position + 1) : "";
    });
    $("submit-ranking").disabled = busy || order.length !== current.k;
  }

  function pick(i) {
    if (busy || !current || order.includes(i)) return;
    order.push(i);
    if (order.length === current.k - 1) {  // the last one is implied
      for (let j = 0; j < current.k; j++) if (!order.includes(j)) order.push(j);
    }
    showRanking();
  }

  function undo() {
    if (busy || !current) return;
    if (order.length === current.k) order.pop();  // the implied last one goes with the one before it
    order.pop();
    showRanking();
  }

  function setBusy(value) {
    busy = value;
    document.querySelectorAll("main button").forEach((b) => { b.disabled = value; });
    showRanking();
  }

  async function submit(payload) {
    if (!current || busy) return;
    setBusy(true);
    const answered = current;
    try {
      const done = await api("POST", "/api/answer",
                             Object.assign({ lease_id: answered.lease_id, query_id: answered.query_id }, payload));
      say(done.outcome === "skipped" ? "Skipped." : "Saved.", "ok");
      await next();
    } catch (e) {
      say(e.message, "error");
      if (e.status === 409 || e.status === 404) await next();  // the lease is gone: move on
      else setBusy(false);  // keep the query: pressing again resubmits with the same lease (stored once)
    }
  }

  function choose(choice) { submit({ choice }); }

  document.querySelectorAll("[data-choice]").forEach((b) => b.addEventListener("click", () => choose(b.dataset.choice)));
  $("submit-ranking").addEventListener("click", () => submit({ ranking: order.slice() }));
  $("undo-ranking").addEventListener("click", undo);

  document.addEventListener("keydown", (e) => {
    if (!current || e.ctrlKey || e.metaKey || e.altKey || e.target === nameInput) return;
    // A held key (auto-repeat), or a press meant for the query just answered, must not answer the next one.
    if (e.repeat || performance.now() - shownAt < KEY_GUARD_MS) return;
    const key = e.key.toLowerCase();
    if (key === "s") choose("skip");
    else if (current.k === 2) {
      if (key === "1") choose("first");
      else if (key === "2") choose("second");
      else if (key === "t") choose("tie");
      else return;
    } else if (/^[1-9]$/.test(key) && Number(key) <= current.k) pick(Number(key) - 1);
    else if (key === "enter" && order.length === current.k) submit({ ranking: order.slice() });
    else if (key === "backspace") undo();
    else if (key === "escape") { order = []; showRanking(); }
    else return;
    e.preventDefault();
  });

  next();
})();
