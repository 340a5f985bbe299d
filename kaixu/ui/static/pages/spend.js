// Spend: the ledger's costs grouped by key, team, model, provider or customer over a chosen range (an SVG chart
// and a table), and the budgets with what they have spent, hold for requests in flight, have left, and when they reset.
import { h, api, usd, int, when, table, barChart } from "../lib.js";

const RANGES = { "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, all: null };
const BY = { key: "Key", team: "Team", model: "Model", provider: "Provider", customer: "Customer" };
const state = { range: "7d", by: "key" };

export async function render(main) {
  const range = h("select", { id: "range" }, Object.keys(RANGES).map(r => h("option", { value: r, selected: r === state.range },
    r === "all" ? "all time" : "last " + r)));
  const by = h("select", { id: "group-by" }, Object.entries(BY).map(([v, l]) => h("option", { value: v, selected: v === state.by }, l)));
  const out = h("section", { "aria-live": "polite" });
  const budgets = h("section", { class: "card", "aria-labelledby": "budgets-title" });
  async function load() {
    state.range = range.value; state.by = by.value;
    const params = new URLSearchParams({ group_by: state.by });
    const seconds = RANGES[state.range];
    if (seconds) params.set("from", String(Math.floor(Date.now() / 1000 - seconds)));
    const data = await api("costs?" + params);
    const groups = data.groups;
    const label = g => g.group === null ? "(none)" : g.group;
    const priced = groups.filter(g => g.cost_usd_number !== null);
    out.replaceChildren(
      h("div", { class: "card" },
        h("h2", {}, `Cost by ${BY[state.by].toLowerCase()}: ${usd(data.total.cost_usd_number)} over ${int(data.total.requests)} requests`),
        priced.length ? barChart(`Cost by ${BY[state.by].toLowerCase()}`, priced.map(g => ({ label: label(g), value: g.cost_usd_number, shown: usd(g.cost_usd_number) })))
          : h("p", { class: "muted" }, "No priced requests in this range.")),
      h("div", { class: "card" }, table(`Cost by ${BY[state.by]}`, [
        { label: BY[state.by], value: label },
        { label: "Requests", value: g => int(g.requests), num: true },
        { label: "Input tokens", value: g => int(g.input_tokens), num: true },
        { label: "Output tokens", value: g => int(g.output_tokens), num: true },
        { label: "Cost (USD)", value: g => g.cost_usd === null ? "—" : g.cost_usd, num: true },
        { label: "Unpriced", value: g => int(g.unpriced_requests), num: true },
      ], groups)));
  }
  range.addEventListener("change", load);
  by.addEventListener("change", load);
  main.append(h("h1", {}, "Spend"),
    h("div", { class: "row card" },
      h("div", {}, h("label", { for: "range" }, "Range"), range),
      h("div", {}, h("label", { for: "group-by" }, "Group by"), by)),
    out, budgets);
  await load();
  const data = await api("budgets");
  budgets.append(h("h2", { id: "budgets-title" }, "Budgets"),
    h("p", { class: "muted" }, data.counters === null ? "The counters do not answer: what is spent cannot be read right now."
      : "This period's settled spend, what requests in flight hold, and what is left."),
    table("Budgets", [
      { label: "Budget", value: b => `${b.level} ${b.name}` },
      { label: "Period", value: b => b.period },
      { label: "Cap (USD)", value: b => b.cap_usd, num: true },
      { label: "Spent", value: b => b.spent_usd ?? "—", num: true },
      { label: "Reserved", value: b => b.reserved_usd ?? "—", num: true },
      { label: "Left", value: b => b.left_usd ?? "—", num: true },
      { label: "Resets", value: b => b.resets ? when(b.resets) : "never" },
    ], data.budgets));
}
