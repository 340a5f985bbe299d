// The playground (the node gateway's chat dashboard): a client key typed into the sidebar, the models that key
// may call (/v1/models), a streamed answer with its tokens and cost, errors in plain words.
import { h, usd, int, announce } from "../lib.js";

const PLAIN = {
  401: "This client key is not accepted by the gateway (unknown, revoked or expired).",
  402: "The budget for this key (or its team or customer) is spent: no more requests until it resets or is raised.",
  403: "This key may not use that model, or a policy rule refused the request.",
  404: "The gateway does not serve that model.",
  429: "Too many requests: a rate limit was reached.",
  503: "The gateway cannot serve this right now (a provider queue is full or its counters do not answer).",
};

export function plain(status, message, retryAfter) {
  let text = PLAIN[status] || (status >= 500 ? "The provider failed to answer." : `The request was refused (${status}).`);
  if (status === 429 && retryAfter) text += ` Try again in ${retryAfter} s.`;
  return message ? `${text} (${message})` : text;
}

const state = { key: "", model: "", history: [] };

// The playground's install id (x-kaixu-install-id), for keys with `seats: N`: one per browser, not a secret.
function installId() {
  let id = localStorage.getItem("kaixu-console-install-id");
  if (!id) { id = "kaixu-console-" + crypto.randomUUID(); localStorage.setItem("kaixu-console-install-id", id); }
  return id;
}

export async function render(main) {
  const keyInput = h("input", { id: "client-key", type: "password", autocomplete: "off", value: state.key,
    "aria-describedby": "client-key-help" });
  const modelSelect = h("select", { id: "model", disabled: true }, h("option", { value: "" }, "load the models first"));
  const loadStatus = h("p", { class: "muted", role: "status" });
  const transcript = h("div", { class: "transcript card", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
  const prompt = h("textarea", { id: "prompt", rows: 3, placeholder: "Ask something… (Enter sends, Shift+Enter for a new line)" });
  const send = h("button", { type: "submit" }, "Send");
  const form = h("form", { class: "card", "aria-label": "Send a message" },
    h("label", { for: "prompt" }, "Message"), prompt, h("div", { class: "row" }, send,
      h("button", { type: "button", class: "secondary", onclick: () => { state.history = []; transcript.replaceChildren(); } }, "Clear")));

  async function loadModels() {
    state.key = keyInput.value.trim();
    if (!state.key) { loadStatus.textContent = "Type a client key first."; return; }
    loadStatus.textContent = "Loading models…";
    const response = await fetch("/v1/models", { headers: { authorization: "Bearer " + state.key } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      loadStatus.textContent = plain(response.status, data.error && data.error.message);
      modelSelect.disabled = true; return;
    }
    const names = (data.data || []).map(m => m.id);
    modelSelect.replaceChildren(...names.map(n => h("option", { value: n, selected: n === state.model }, n)));
    modelSelect.disabled = names.length === 0;
    state.model = modelSelect.value;
    loadStatus.textContent = `${names.length} model${names.length === 1 ? "" : "s"} for this key.`;
  }

  keyInput.addEventListener("keydown", e => { if (e.key === "Enter") { e.preventDefault(); loadModels(); } });
  modelSelect.addEventListener("change", () => { state.model = modelSelect.value; });
  prompt.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); } });

  form.addEventListener("submit", async event => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    if (!state.key || !state.model) { loadStatus.textContent = "Type a client key and load its models first."; keyInput.focus(); return; }
    prompt.value = "";
    state.history.push({ role: "user", content: text });
    transcript.append(h("div", { class: "msg user" }, text));
    const answer = h("div", { class: "msg assistant" });
    const body = h("span", { class: "answer-text" });
    const meta = h("span", { class: "meta" }, "streaming…");
    answer.append(body, meta);
    transcript.append(answer);
    send.disabled = true;
    try {
      await stream(state, body, meta, answer);
    } finally {
      send.disabled = false; transcript.scrollTop = transcript.scrollHeight; prompt.focus();
    }
  });

  main.append(h("h1", {}, "Playground"), h("div", { class: "grid2" },
    h("aside", { class: "card", "aria-label": "Key and model" },
      h("label", { for: "client-key" }, "Client key"), keyInput,
      h("p", { id: "client-key-help", class: "muted" }, "A key a client would use (not the admin key). It stays in this page."),
      h("button", { type: "button", onclick: loadModels }, "Load models"), loadStatus,
      h("label", { for: "model" }, "Model"), modelSelect),
    h("section", { "aria-label": "Chat" }, transcript, form)));
  if (state.key) await loadModels();
}

async function stream(state, body, meta, answer) {
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { authorization: "Bearer " + state.key, "content-type": "application/json", "x-kaixu-install-id": installId() },
    body: JSON.stringify({ model: state.model, stream: true, stream_options: { include_usage: true }, messages: state.history }),
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    answer.classList.add("failed");
    body.textContent = plain(response.status, data.error && data.error.message, response.headers.get("retry-after"));
    meta.textContent = `HTTP ${response.status}`;
    state.history.pop();
    announce(body.textContent);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", usage = null, cost = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trimEnd();
      buffer = buffer.slice(cut + 1);
      if (line.startsWith(": kaixu-cost-usd=")) cost = Number(line.slice(": kaixu-cost-usd=".length));
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") continue;
      let chunk; try { chunk = JSON.parse(payload); } catch { continue; }
      if (chunk.error) { answer.classList.add("failed"); text += "\n" + (chunk.error.message || "the stream failed"); }
      for (const choice of chunk.choices || []) if (choice.delta && choice.delta.content) text += choice.delta.content;
      if (chunk.usage) usage = chunk.usage;
      body.textContent = text;
    }
  }
  state.history.push({ role: "assistant", content: text });
  const ms = Math.round(performance.now() - started);
  const tokens = usage ? `${int(usage.prompt_tokens)} in · ${int(usage.completion_tokens)} out` : "tokens not reported";
  meta.textContent = `${state.model} · ${tokens} · cost ${cost === null ? "unknown" : usd(cost)} · ${ms} ms`;
  meta.setAttribute("data-cost", cost === null ? "" : String(cost));
  announce("Answer complete, " + meta.textContent);
}
