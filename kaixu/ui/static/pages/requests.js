// Requests: the ledger newest first, filtered by key, model, status and time, refreshed every 2 s while open.
import { h, api, usd, int, when, table } from "../lib.js";

const state = { key_name: "", model: "", status: "", from: "", to: "" };

export function statusPill(status) {
  return h("span", { class: "pill " + (status < 300 ? "ok" : status < 500 ? "warn" : "bad") }, String(status));
}

export async function render(main) {
  const fields = {};
  const input = (name, label, attrs = {}) => {
    fields[name] = h("input", { id: "filter-" + name, name, value: state[name], ...attrs });
    return h("div", {}, h("label", { for: "filter-" + name }, label), fields[name]);
  };
  const form = h("form", { class: "row card", "aria-label": "Filters" },
    input("key_name", "Key"), input("model", "Model"),
    input("status", "Status", { inputmode: "numeric", size: 5, pattern: "[1-5][0-9][0-9]" }),
    input("from", "From", { type: "datetime-local" }), input("to", "To", { type: "datetime-local" }),
    h("div", {}, h("button", { type: "submit" }, "Apply")));
  const live = h("p", { class: "muted", role: "status" });
  const out = h("div");
  const error = h("p", { class: "error", role: "alert" });
  async function load() {
    const params = new URLSearchParams({ limit: "50" });
    for (const [name, value] of Object.entries(state)) {
      if (!value) continue;
      params.set(name, name === "from" || name === "to" ? new Date(value).toISOString() : value);
    }
    try {
      const data = await api("requests?" + params);
      error.textContent = "";
      out.replaceChildren(table("Requests, newest first", [
        { label: "Time (UTC)", value: r => h("a", { href: `#request/${encodeURIComponent(r.request_id)}/${r.ts}` }, when(r.time)) },
        { label: "Key", value: r => r.key_name ?? "—" },
        { label: "Door", value: r => `${r.front} ${r.operation}` },
        { label: "Model", value: r => r.model ?? "—" },
        { label: "Provider", value: r => r.provider ?? "—" },
        { label: "Status", value: r => statusPill(r.status) },
        { label: "Tokens in/out", value: r => `${int(r.input_tokens)} / ${int(r.output_tokens)}`, num: true },
        { label: "Cost", value: r => usd(r.cost_usd_number), num: true },
        { label: "ms", value: r => int(Math.round(r.latency_ms)), num: true },
      ], data.records));
      live.textContent = `Live: ${data.records.length} shown, refreshed ${new Date().toLocaleTimeString()}.`;
    } catch (e) { error.textContent = e.message; }
  }
  form.addEventListener("submit", e => {
    e.preventDefault();
    for (const name of Object.keys(state)) state[name] = fields[name].value.trim();
    load();
  });
  main.append(h("h1", {}, "Requests"), form, live, error, out);
  await load();
  const timer = setInterval(load, 2000);
  return () => clearInterval(timer);
}
