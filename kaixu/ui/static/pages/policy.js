// Policy: where it is, its digest, the last (re)load and its error, and what `kaixu check` warns about.
import { h, api, when } from "../lib.js";

function governed(entry) {
  const parts = [];
  if (entry.budget) parts.push(`${entry.budget.usd} USD / ${entry.budget.period}`);
  const l = entry.limits || {};
  if (l.rpm) parts.push(`${l.rpm} rpm`); if (l.tpm) parts.push(`${l.tpm} tpm`); if (l.max_parallel) parts.push(`${l.max_parallel} in flight`);
  if (entry.seats) parts.push(`${entry.seats} seats`);
  return parts.join(", ") || "no budget or limit";
}

export async function render(main) {
  const p = await api("policy");
  main.append(h("h1", {}, "Policy"),
    h("section", { class: "card", "aria-labelledby": "source-title" }, h("h2", { id: "source-title" }, "Source"),
      h("dl", { class: "facts" },
        h("dt", {}, "File"), h("dd", {}, h("code", {}, p.path || "—")),
        h("dt", {}, "Digest"), h("dd", {}, h("code", { id: "policy-digest" }, p.digest)),
        h("dt", {}, "Loaded"), h("dd", {}, `${when(p.loaded)} (load number ${p.generation})`),
        h("dt", {}, "Last reload"), h("dd", { id: "reload-status" }, p.last_reload_error
          ? h("span", { class: "bad" }, "failed, the policy above stays in force: " + p.last_reload_error)
          : h("span", { class: "ok" }, "no error")),
        h("dt", {}, "Admin keys"), h("dd", {}, p.admin_keys.join(", ") || "none"),
        h("dt", {}, "Prompt and answer text"), h("dd", {}, p.content_logging ? "kept in the ledger (ledger.content)" : "not kept")),
      h("p", { class: "muted" }, "kaixu reloads the file when it changes; edit it, then check it with ", h("code", {}, "kaixu check " + (p.path || "proxy.yaml")), ".")),
    h("section", { class: "card", "aria-labelledby": "warnings-title" }, h("h2", { id: "warnings-title" }, "kaixu check warnings"),
      p.warnings.length ? h("ul", {}, p.warnings.map(w => h("li", { class: "warn" }, w))) : h("p", { class: "ok" }, "No warnings.")),
    h("section", { class: "card", "aria-labelledby": "gov-title" }, h("h2", { id: "gov-title" }, "Teams and customers"),
      h("ul", {}, [...p.teams.map(t => h("li", {}, `team ${t.name}: ${governed(t)}`)),
        ...p.customers.map(c => h("li", {}, `customer ${c.name}: ${governed(c)}`))]),
      !p.teams.length && !p.customers.length ? h("p", { class: "muted" }, "None in the policy.") : null));
}
