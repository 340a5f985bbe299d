// Models and providers: each model's deployments with their prices, the breakers' state, what this process
// has seen of them (served, failed, error rate, latency), fallbacks, and the provider queues.
import { h, api, int, table } from "../lib.js";

const price = p => p ? `${p.input ?? "—"} in · ${p.output ?? "—"} out` : "no price";
const breaker = state => h("span", { class: "pill " + (state === "closed" ? "ok" : state === "open" ? "bad" : "warn") }, state);

export async function render(main) {
  const data = await api("models");
  const rows = data.models.flatMap(m => m.deployments.map((d, i) => ({ model: m, d, first: i === 0 })));
  const q = data.queues || {};
  main.append(h("h1", {}, "Models and providers"),
    h("section", { class: "card", "aria-labelledby": "routes-title" }, h("h2", { id: "routes-title" }, "Routes"),
      h("p", { class: "muted" }, "Prices in USD per million tokens. Counters are this process's since it started."),
      table("Routes", [
        { label: "Model", value: r => r.first ? h("strong", {}, r.model.name) : "" },
        { label: "Deployment", value: r => `${r.d.provider} / ${r.d.model}` + (r.model.deployments.length > 1 ? ` (weight ${r.d.weight})` : "") },
        { label: "Price", value: r => price(r.d.price_per_mtok_usd) },
        { label: "Breaker", value: r => breaker(r.d.breaker) },
        { label: "Served", value: r => int(r.d.served), num: true },
        { label: "Failed", value: r => int(r.d.failed), num: true },
        { label: "Error rate", value: r => r.d.error_rate === null ? "—" : (r.d.error_rate * 100).toFixed(1) + "%", num: true },
        { label: "Latency", value: r => r.d.latency_ms === null ? "—" : Math.round(r.d.latency_ms) + " ms", num: true },
        { label: "Fallbacks", value: r => r.first && r.model.fallbacks.length ? r.model.fallbacks.join(", ") : "" },
      ], rows)),
    h("section", { class: "card", "aria-labelledby": "providers-title" }, h("h2", { id: "providers-title" }, "Providers"),
      table("Providers", [
        { label: "Provider", value: p => p.name }, { label: "Kind", value: p => p.kind },
        { label: "Key", value: p => p.key_configured ? "configured" : h("span", { class: "bad" }, "missing") },
      ], data.providers)),
    h("section", { class: "card", "aria-labelledby": "queues-title" }, h("h2", { id: "queues-title" }, "Queues"),
      q.maxConcurrent ? h("p", {}, `${int(q.active)} running of ${int(q.maxConcurrent)}, ${int(q.queued)} waiting (room for ${int(q.maxQueue)}); ${int(q.totalQueued)} queued since start.`)
        : h("p", { class: "muted" }, "No provider has max_concurrent: nothing waits in a queue."),
      h("p", { class: "muted" }, `Breaker: opens after ${data.breaker.failures ?? "never"} failures in ${data.breaker.window_s} s, for ${data.breaker.cooldown_s} s.`)));
}
