// Keys: the policy's keys (read only: they live in proxy.yaml) and the store's (create, with the secret shown
// once; revoke), with budgets, limits and seats; the installs that seats count.
import { h, api, table, when, copyButton, announce } from "../lib.js";

const budgetText = b => b ? `${b.usd} USD / ${b.period}` : "—";
const limitsText = l => l ? [l.rpm && `${l.rpm} rpm`, l.tpm && `${l.tpm} tpm`, l.max_parallel && `${l.max_parallel} in flight`].filter(Boolean).join(", ") || "—" : "—";

export async function render(main) {
  const secret = h("div", { "aria-live": "polite" });
  const error = h("p", { class: "error", role: "alert" });
  const storeKeys = h("div");
  const field = (name, label, attrs = {}) => h("div", {}, h("label", { for: "new-" + name }, label), h("input", { id: "new-" + name, name, ...attrs }));
  const form = h("form", { class: "card", "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "Create a key"),
    h("div", { class: "row" },
      field("name", "Name", { required: true, pattern: "[A-Za-z0-9._-]{1,64}" }), field("team", "Team"), field("customer", "Customer"),
      field("models", "Models (comma-separated globs)", { placeholder: "all" })),
    h("div", { class: "row" },
      field("expires", "Expires", { placeholder: "30d, 12h or a date", size: 16 }),
      field("budget", "Budget (USD)", { inputmode: "decimal", size: 8 }),
      h("div", {}, h("label", { for: "new-period" }, "Period"), h("select", { id: "new-period", name: "period" },
        ["day", "week", "month", "total"].map(p => h("option", { value: p, selected: p === "month" }, p))))),
    h("div", { class: "row" },
      field("rpm", "Requests / min", { inputmode: "numeric", size: 6 }), field("tpm", "Tokens / min", { inputmode: "numeric", size: 8 }),
      field("max_parallel", "In flight", { inputmode: "numeric", size: 4 }), field("seats", "Seats", { inputmode: "numeric", size: 4 }),
      h("div", {}, h("button", { type: "submit" }, "Create key"))));

  form.addEventListener("submit", async event => {
    event.preventDefault();
    const v = name => form.elements[name].value.trim();
    const n = name => v(name) ? Number(v(name)) : null;
    const body = { name: v("name"), team: v("team") || null, customer: v("customer") || null,
      models: v("models") ? v("models").split(",").map(m => m.trim()).filter(Boolean) : [] };
    if (v("expires")) body.expires = v("expires");
    if (v("budget")) body.budget = { usd: Number(v("budget")), period: v("period") };
    if (n("rpm") || n("tpm") || n("max_parallel")) body.limits = { rpm: n("rpm"), tpm: n("tpm"), max_parallel: n("max_parallel") };
    if (n("seats")) body.seats = n("seats");
    try {
      const made = await api("keys", { method: "POST", body });
      error.textContent = "";
      form.reset();
      secret.replaceChildren(h("div", { class: "secret", id: "new-secret" },
        h("p", {}, h("strong", {}, `Key ${made.name} created.`), " Copy its secret now: it is shown only once."),
        h("div", { class: "row" }, h("code", { id: "new-secret-value" }, made.key), copyButton(made.key, "Copy the new key's secret"))));
      announce(`Key ${made.name} created; its secret is shown once.`);
      await loadStore();
    } catch (e) { error.textContent = e.message; }
  });

  async function revoke(name) {
    if (!confirm(`Revoke the key ${name}? Its callers get 401 within 2 seconds.`)) return;
    try { await api("keys/" + encodeURIComponent(name), { method: "DELETE" }); announce(`Key ${name} revoked.`); await loadStore(); }
    catch (e) { error.textContent = e.message; }
  }

  async function loadStore() {
    try {
      const data = await api("keys");
      storeKeys.replaceChildren(table("Store keys", [
        { label: "Name", value: k => k.name },
        { label: "State", value: k => h("span", { class: "pill " + (k.state === "active" ? "ok" : "bad") }, k.state) },
        { label: "Team", value: k => k.team ?? "—" }, { label: "Customer", value: k => k.customer ?? "—" },
        { label: "Models", value: k => k.models.length ? k.models.join(", ") : "all" },
        { label: "Budget", value: k => budgetText(k.budget) }, { label: "Limits", value: k => limitsText(k.limits) },
        { label: "Seats", value: k => k.seats ?? "—", num: true },
        { label: "Created", value: k => when(k.created) }, { label: "Expires", value: k => when(k.expires) },
        { label: "Action", value: k => k.state === "revoked" ? "" : h("button", { type: "button", class: "danger",
          "aria-label": `Revoke ${k.name}`, onclick: () => revoke(k.name) }, "Revoke") },
      ], data.keys));
    } catch (e) { storeKeys.replaceChildren(h("p", { class: "muted" }, "Store keys: " + e.message)); }
  }

  const policy = await api("policy");
  main.append(h("h1", {}, "Keys"), form, secret, error,
    h("section", { class: "card", "aria-labelledby": "store-title" }, h("h2", { id: "store-title" }, "Store keys"),
      h("p", { class: "muted" }, "Made here or with kaixu keys create; kept in the store, hashed."), storeKeys),
    h("section", { class: "card", "aria-labelledby": "policy-keys-title" }, h("h2", { id: "policy-keys-title" }, "Policy keys"),
      h("p", { class: "muted" }, "Listed in the policy file by their hash: change them there."),
      table("Policy keys", [
        { label: "Name", value: k => k.name }, { label: "Team", value: k => k.team ?? "—" },
        { label: "Customer", value: k => k.customer ?? "—" },
        { label: "Models", value: k => k.models.length ? k.models.join(", ") : "all" },
        { label: "Budget", value: k => budgetText(k.budget) }, { label: "Limits", value: k => limitsText(k.limits) },
        { label: "Seats", value: k => k.seats ?? "—", num: true }, { label: "Expires", value: k => k.expires ?? "—" },
      ], policy.keys)));
  const seats = h("section", { class: "card", "aria-labelledby": "seats-title" }, h("h2", { id: "seats-title" }, "Seats: installs"));
  main.append(seats);
  await loadStore();
  try {
    const data = await api("seats");
    seats.append(table("Installs", [
      { label: "Key or customer", value: s => s.scope }, { label: "Install id", value: s => h("code", {}, s.install_id) },
      { label: "First seen", value: s => when(s.first_seen) }, { label: "Last seen", value: s => when(s.last_seen) },
      { label: "State", value: s => s.state },
    ], data.seats));
  } catch (e) { seats.append(h("p", { class: "muted" }, e.message)); }
}
