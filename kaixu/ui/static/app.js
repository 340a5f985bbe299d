// The console's shell: sign-in (the admin key exchanged for an HttpOnly session cookie), the navigation, and
// one page module per hash route. A page's render(main, params) may return a function that stops it (polling).
import { h, session, announce } from "./lib.js";

const PAGES = {
  playground: "Playground", spend: "Spend", requests: "Requests", request: "Request", keys: "Keys",
  models: "Models", setup: "Client setup", policy: "Policy",
};
let stop = null;

async function startSession(data) {
  session.csrf = data.csrf_token; session.admin = data.admin;
  document.getElementById("signin").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("who").textContent = "signed in as " + data.admin;
  if (!location.hash) location.hash = "#playground"; else route();
}

function showSignIn(message) {
  session.csrf = null; session.admin = null;
  if (stop) { stop(); stop = null; }
  document.getElementById("app").hidden = true;
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  document.getElementById("admin-key").focus();
}

async function route() {
  if (!session.csrf) return;
  if (stop) { stop(); stop = null; }
  const [name, ...rest] = location.hash.slice(1).split("/");
  const page = PAGES[name] ? name : "playground";
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.getAttribute("href").slice(1);
    if (target === page || (page === "request" && target === "requests")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = PAGES[page] + " · kaixu console";
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const module = await import(`./pages/${page}.js`);
  main.replaceChildren();
  try {
    stop = (await module.render(main, rest.map(decodeURIComponent))) || null;
  } catch (error) {
    main.append(h("p", { class: "error", role: "alert" }, "Could not load this page: " + error.message));
  }
  announce(PAGES[page] + " page");
}

document.getElementById("signin-form").addEventListener("submit", async event => {
  event.preventDefault();
  const input = document.getElementById("admin-key");
  const response = await fetch("/ui/session", {
    method: "POST", headers: { "content-type": "application/json" }, credentials: "same-origin",
    body: JSON.stringify({ key: input.value }),
  });
  input.value = "";
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { showSignIn((data.error && data.error.message) || "Sign-in failed."); return; }
  await startSession(data);
  document.getElementById("main").focus();
});

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/ui/session", { method: "DELETE", headers: { "x-kaixu-csrf": session.csrf || "" }, credentials: "same-origin" });
  showSignIn("Signed out.");
});

window.addEventListener("kaixu-signed-out", () => showSignIn("Your session has ended: sign in again."));
window.addEventListener("hashchange", route);

(async () => {
  const response = await fetch("/ui/session", { credentials: "same-origin" });
  if (response.ok) await startSession(await response.json()); else showSignIn("");
})();
