// The demo page's script (served by service/page.py; no framework, no build step).
// Every image is its own POST v1/classify, at most MAX_IN_FLIGHT at a time: each card gets
// its own Server-Timing and its own error, and the gateway's micro-batcher still batches
// the concurrent requests. URLs are relative, so the page also works behind a path prefix.
"use strict";

(() => {
  const MODELS_URL = "v1/models";
  const CLASSIFY_URL = "v1/classify";
  const KEY_STORAGE = "resnet-serving.api-key"; // sessionStorage: this tab only, never the URL
  const MAX_IN_FLIGHT = 4;
  const MODEL_RETRY_MS = 2000; // while the gateway warms up (503 not_ready)
  const STAGES = ["decode", "queue", "backend", "total"];

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyError: $("key-error"),
    forgetKey: $("forget-key"),
    drop: $("drop"),
    files: $("files"),
    choose: $("choose"),
    topK: $("top-k"),
    clear: $("clear"),
    status: $("status"),
    results: $("results"),
    template: $("card-template"),
  };

  const queue = []; // cards waiting for a request slot
  const waitingForKey = []; // cards answered 401: sent again once a key is given
  let inFlight = 0;
  let modelTimer = null;

  // ---------------------------------------------------------------- API key

  // Storage can be disabled (privacy settings): then the key lives only until the next 401.
  let keyInMemory = null;

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE);
    } catch (_) {
      return keyInMemory;
    }
  }

  function storeKey(key) {
    keyInMemory = key;
    try {
      if (key === null) sessionStorage.removeItem(KEY_STORAGE);
      else sessionStorage.setItem(KEY_STORAGE, key);
    } catch (_) {
      /* kept in memory only */
    }
  }

  function authHeaders() {
    const key = storedKey();
    return key ? { "X-API-Key": key } : {};
  }

  function askForKey(detail) {
    const hadKey = storedKey() !== null;
    el.keyForm.hidden = false;
    el.keyError.hidden = !hadKey;
    el.keyError.textContent = hadKey ? `The gateway refused the key: ${detail}` : "";
    el.keyInput.focus();
    announce(hadKey ? `API key refused: ${detail}` : "This gateway needs an API key.");
  }

  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = el.keyInput.value.trim();
    if (!key) return;
    storeKey(key);
    el.keyInput.value = "";
    el.keyForm.hidden = true;
    el.forgetKey.hidden = false;
    loadModel();
    enqueue(waitingForKey.splice(0));
  });

  el.forgetKey.addEventListener("click", () => {
    storeKey(null);
    el.forgetKey.hidden = true;
    announce("API key forgotten.");
    loadModel();
  });

  // ---------------------------------------------------------------- responses

  // The API's own words: its JSON error body {"error", "detail", "request_id"} when there is
  // one, else the HTTP status (a proxy's HTML error page, say).
  async function apiError(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON */
    }
    if (body && typeof body.detail === "string") {
      return { code: body.error || String(response.status), detail: body.detail, requestId: body.request_id || response.headers.get("X-Request-ID") };
    }
    return { code: String(response.status), detail: `HTTP ${response.status} ${response.statusText}`.trim(), requestId: response.headers.get("X-Request-ID") };
  }

  // "decode;dur=1.2, queue;dur=0.3" -> {decode: 1.2, queue: 0.3}
  function parseServerTiming(header) {
    const out = {};
    for (const entry of (header || "").split(",")) {
      const [name, ...params] = entry.trim().split(";");
      for (const p of params) {
        const [k, v] = p.trim().split("=");
        if (k === "dur" && name && !Number.isNaN(Number(v))) out[name.trim()] = Number(v);
      }
    }
    return out;
  }

  function ms(value) {
    return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
  }

  function percent(score) {
    return `${(score * 100).toFixed(1)} %`;
  }

  // ---------------------------------------------------------------- the model

  async function loadModel() {
    clearTimeout(modelTimer);
    let response;
    try {
      response = await fetch(MODELS_URL, { headers: authHeaders(), cache: "no-store" });
    } catch (err) {
      el.model.textContent = `Cannot reach the gateway (${err.message}); retrying.`;
      modelTimer = setTimeout(loadModel, MODEL_RETRY_MS);
      return;
    }
    if (response.ok) {
      const m = (await response.json()).models[0];
      el.model.textContent = `Model ${m.name} version ${m.version} (${m.architecture}, ${m.num_labels} labels, ${m.backend} backend)`;
      el.topK.max = String(m.num_labels);
      if (!el.topK.dataset.touched) el.topK.value = String(m.default_top_k);
      return;
    }
    const err = await apiError(response);
    if (response.status === 401) {
      el.model.textContent = "The gateway needs an API key.";
      askForKey(err.detail);
    } else {
      el.model.textContent = `The model is not available yet: ${err.detail}. Retrying.`;
      modelTimer = setTimeout(loadModel, MODEL_RETRY_MS);
    }
  }

  el.topK.addEventListener("change", () => {
    el.topK.dataset.touched = "1";
  });

  // ---------------------------------------------------------------- cards

  function announce(text) {
    el.status.textContent = text;
  }

  function newCard(file) {
    const li = el.template.content.firstElementChild.cloneNode(true);
    const name = file.name || "pasted image";
    li.querySelector(".name").textContent = name;
    const img = li.querySelector("img");
    const url = URL.createObjectURL(file);
    img.alt = `Preview of ${name}`;
    img.addEventListener("error", () => {
      img.hidden = true;
      li.querySelector(".no-preview").hidden = false;
    });
    img.src = url;
    return { li, file, name, url };
  }

  function show(card, state, text) {
    card.li.dataset.state = state;
    card.li.querySelector(".state").textContent = text;
  }

  function showResult(card, body, timing, roundTripMs) {
    const top = body.predictions[0].top_k;
    const list = card.li.querySelector(".labels");
    list.replaceChildren(
      ...top.map((s) => {
        const row = document.createElement("li");
        const label = document.createElement("span");
        label.className = "label";
        label.textContent = s.label;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.width = `${Math.max(0, Math.min(1, s.score)) * 100}%`;
        bar.append(fill);
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = percent(s.score);
        row.append(label, bar, score);
        return row;
      }),
    );
    list.hidden = false;
    const meta = card.li.querySelector(".meta");
    meta.textContent = `${body.model.name} version ${body.model.version}`;
    meta.hidden = false;
    const t = card.li.querySelector(".timing");
    const stages = STAGES.filter((s) => s in timing).map((s) => `${s === "total" ? "server total" : s} ${ms(timing[s])}`);
    stages.push(`round trip ${ms(roundTripMs)}`);
    t.textContent = stages.join(" · ");
    t.hidden = false;
    show(card, "done", `Top ${top.length} of the model's labels:`);
    announce(`${card.name}: ${top[0].label}, ${percent(top[0].score)}`);
  }

  function showError(card, err) {
    show(card, "error", "The gateway could not classify this image.");
    const p = card.li.querySelector(".error");
    p.textContent = err.detail;
    if (err.code || err.requestId) {
      const small = document.createElement("small");
      small.textContent = ` (${[err.code, err.requestId && `request ${err.requestId}`].filter(Boolean).join(", ")})`;
      p.append(small);
    }
    p.hidden = false;
    announce(`${card.name}: error: ${err.detail}`);
  }

  // ---------------------------------------------------------------- requests

  function enqueue(cards) {
    for (const card of cards) {
      show(card, "pending", "Waiting for the gateway…");
      queue.push(card);
    }
    pump();
  }

  function pump() {
    while (inFlight < MAX_IN_FLIGHT && queue.length) {
      const card = queue.shift();
      inFlight += 1;
      classify(card).finally(() => {
        inFlight -= 1;
        pump();
      });
    }
  }

  async function classify(card) {
    show(card, "pending", "Classifying…");
    const form = new FormData();
    form.append("image", card.file, card.name);
    const k = Number.parseInt(el.topK.value, 10);
    const url = Number.isInteger(k) && k > 0 ? `${CLASSIFY_URL}?top_k=${k}` : CLASSIFY_URL;
    const started = performance.now();
    let response;
    try {
      response = await fetch(url, { method: "POST", body: form, headers: authHeaders() });
    } catch (err) {
      showError(card, { code: "network", detail: `the request failed: ${err.message}` });
      return;
    }
    if (response.ok) {
      const body = await response.json();
      const timing = parseServerTiming(response.headers.get("Server-Timing"));
      showResult(card, body, timing, performance.now() - started);
      return;
    }
    const err = await apiError(response);
    if (response.status === 401) {
      show(card, "pending", "Waiting for an API key…");
      waitingForKey.push(card);
      askForKey(err.detail);
      return;
    }
    showError(card, err);
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    announce(`Classifying ${files.length} image${files.length > 1 ? "s" : ""}.`);
    const cards = files.map(newCard);
    el.results.prepend(...cards.map((c) => c.li)); // newest batch on top, in the order given
    el.clear.disabled = false;
    enqueue(cards);
  }

  // ---------------------------------------------------------------- ways in

  el.choose.addEventListener("click", () => el.files.click());
  el.files.addEventListener("change", () => {
    addFiles(el.files.files);
    el.files.value = ""; // choosing the same file again fires change again
  });

  // Drops anywhere on the page count (a near miss must not navigate away to the image).
  let dragDepth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    el.drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.drop.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    el.drop.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });

  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData?.files || []);
    if (!files.length) return; // text pasted into the key or top-k field stays text
    event.preventDefault();
    addFiles(files);
  });

  el.clear.addEventListener("click", () => {
    queue.length = 0;
    waitingForKey.length = 0;
    for (const img of el.results.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    el.results.replaceChildren();
    el.clear.disabled = true;
    announce("Results cleared.");
    el.choose.focus();
  });

  el.forgetKey.hidden = storedKey() === null;
  loadModel();
})();
