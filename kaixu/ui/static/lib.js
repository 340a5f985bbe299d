// Helpers shared by the console's pages: elements built without innerHTML (no text is ever parsed as HTML),
// the admin API under /ui/api/ with the session's CSRF token, numbers and money shown, and an SVG bar chart.

export const session = { csrf: null, admin: null };

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (method !== "GET") headers["x-kaixu-csrf"] = session.csrf || "";
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch("/ui/api/" + path, {
    method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) window.dispatchEvent(new Event("kaixu-signed-out"));
    throw new ApiError(response.status, (data.error && data.error.message) || response.statusText, data.error && data.error.code);
  }
  return data;
}

export function usd(number) {
  if (number === null || number === undefined) return "—";
  if (number === 0) return "$0";
  return "$" + (number < 0.01 ? number.toFixed(6) : number.toFixed(4));
}

export function int(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"); }

export function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "—"; }

export function table(caption, columns, rows) {
  // columns: [{label, value: row => text|Node, num}]
  return h("table", {},
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, columns.map(c => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.length ? rows.map(r => h("tr", {}, columns.map(c => h("td", { class: c.num ? "num" : null }, c.value(r)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing yet."))));
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A horizontal bar chart drawn by the page: one bar per item ({label, value, shown}), labelled for screen readers.
export function barChart(title, items) {
  const width = 860, bar = 26, gap = 8, left = 220, right = 120;
  const height = Math.max(1, items.length) * (bar + gap) + 10;
  const max = Math.max(...items.map(i => i.value || 0), 0) || 1;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  svg.append(s("title", {}, title));
  items.forEach((item, index) => {
    const y = 5 + index * (bar + gap);
    const w = Math.max(2, ((item.value || 0) / max) * (width - left - right));
    svg.append(s("text", { x: left - 8, y: y + bar / 2 + 4, "text-anchor": "end" }, item.label.length > 28 ? item.label.slice(0, 27) + "…" : item.label));
    const rect = s("rect", { x: left, y, width: w, height: bar, rx: 3, fill: "#1f5fbf" });
    rect.append(s("title", {}, `${item.label}: ${item.shown}`));
    svg.append(rect);
    svg.append(s("text", { x: left + w + 6, y: y + bar / 2 + 4 }, item.shown));
  });
  return h("figure", { class: "chart" }, svg);
}

export function copyButton(text, label) {
  const button = h("button", { type: "button", class: "secondary", "aria-label": label }, "Copy");
  button.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
    catch { button.textContent = "Select and copy"; }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  return button;
}

export function announce(text) { const el = document.getElementById("status"); if (el) el.textContent = text; }
