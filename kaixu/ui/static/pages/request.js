// One request end to end: its door and route, every attempt, the verdicts of the policy rules, rate limits and
// budgets it met (shadow ones too), tokens and cost, and its prompt and answer where ledger.content keeps them.
import { h, api, usd, int, when, table } from "../lib.js";
import { statusPill } from "./requests.js";

export async function render(main, [id, ts]) {
  const params = new URLSearchParams();
  if (ts) { params.set("from", String(Number(ts) - 1)); params.set("to", String(Number(ts) + 1)); }
  const r = await api(`requests/${encodeURIComponent(id)}?${params}`);
  const attempts = Array.isArray(r.attempts) ? r.attempts : null;
  const verdicts = Array.isArray(r.verdicts) ? r.verdicts : [];
  const shadow = r.attributes && r.attributes.policy_shadow;
  main.append(
    h("p", {}, h("a", { href: "#requests" }, "← Requests")),
    h("h1", {}, "Request ", h("code", {}, r.request_id)),
    h("section", { class: "card", "aria-labelledby": "summary-title" }, h("h2", { id: "summary-title" }, "Summary"),
      h("dl", { class: "facts" },
        h("dt", {}, "Time"), h("dd", {}, when(r.time)),
        h("dt", {}, "Door"), h("dd", {}, `${r.front} (${r.operation})${r.stream ? ", streamed" : ""}`),
        h("dt", {}, "Key"), h("dd", {}, r.key_name ?? "—", r.team ? ` · team ${r.team}` : "", r.customer ? ` · customer ${r.customer}` : ""),
        h("dt", {}, "Model asked"), h("dd", {}, r.model ?? "—"),
        h("dt", {}, "Route"), h("dd", {}, r.provider ? `${r.provider} / ${r.upstream_model}` : "not routed", r.degraded ? " (a fallback served it)" : ""),
        h("dt", {}, "Status"), h("dd", {}, statusPill(r.status), r.error ? " " + r.error : ""),
        h("dt", {}, "Tokens"), h("dd", {}, `${int(r.input_tokens)} in · ${int(r.output_tokens)} out · ${int(r.cached_input_tokens)} cached · ${int(r.reasoning_tokens)} reasoning` + (r.usage_source ? ` (${r.usage_source})` : "")),
        h("dt", {}, "Cost"), h("dd", { id: "request-cost" }, r.cost_usd === null ? (r.unpriced ? "unpriced model" : "none") : `${r.cost_usd} USD`),
        h("dt", {}, "Latency"), h("dd", {}, `${int(Math.round(r.latency_ms))} ms` + (r.ttft_ms ? ` · first token ${int(Math.round(r.ttft_ms))} ms` : "")))),
    h("section", { class: "card", "aria-labelledby": "attempts-title" }, h("h2", { id: "attempts-title" }, "Attempts"),
      !attempts && r.provider ? h("p", { class: "muted" }, "Forwarded once, without retries or fallbacks: the one attempt is the record's own.") : null,
      attempts ? table("Attempts", [
        { label: "#", value: a => String(attempts.indexOf(a) + 1), num: true },
        { label: "Deployment", value: a => `${a.provider} / ${a.model}` },
        { label: "Status", value: a => a.status ? statusPill(a.status) : "—" },
        { label: "Time (ms)", value: a => int(a.ms), num: true },
        { label: "Error", value: a => a.error ?? "" },
      ], attempts) : r.provider ? table("Attempts", [
        { label: "#", value: () => "1", num: true },
        { label: "Deployment", value: () => `${r.provider} / ${r.upstream_model}` },
        { label: "Status", value: () => statusPill(r.status) },
        { label: "Time (ms)", value: () => int(Math.round(r.latency_ms)), num: true },
        { label: "Error", value: () => r.error ?? "" },
      ], [r]) : h("p", { class: "muted" }, "No attempt: the request was answered by kaixu before it was routed.")),
    h("section", { class: "card", "aria-labelledby": "verdicts-title" }, h("h2", { id: "verdicts-title" }, "Policy verdicts, limits and budgets"),
      table("Verdicts", [
        { label: "Step", value: v => v.step },
        { label: "Rule or level", value: v => v.name },
        { label: "Verdict", value: v => h("span", { class: "pill " + ({ refused: "bad", shadow: "warn" }[v.outcome] || "ok") }, v.outcome) },
        { label: "Detail", value: v => v.detail },
      ], verdicts),
      shadow ? h("p", { class: "warn" }, `Shadow mode: ${shadow} would have refused or clamped this request.`) : null),
    h("section", { class: "card", "aria-labelledby": "content-title" }, h("h2", { id: "content-title" }, "Prompt and answer"),
      r.prompt !== null || r.answer !== null
        ? [h("h3", {}, "Prompt"), h("pre", {}, r.prompt ?? "—"), h("h3", {}, "Answer"), h("pre", {}, r.answer ?? "—")]
        : h("p", { class: "muted" }, r.content_stored ? "Not stored for this request." : "Not kept: the policy's ledger.content is off (only the prompt's SHA-256 is kept).")));
}
