// Client setup: the exact lines to point each client at this gateway (its base URL, the key variable, the model
// names it serves), each with a copy button. The key is a placeholder variable: export your own client key.
import { h, api, copyButton } from "../lib.js";

export function snippets(base, models) {
  const pick = (pattern) => models.find(m => pattern.test(m)) || models[0] || "MODEL";
  const gpt = pick(/^gpt|^o\d/), claude = pick(/claude/), gemini = pick(/gemini/);
  return [
    { id: "claude-code", title: "Claude Code", note: "Speaks the Anthropic API; no /v1 in the base URL.", lang: "sh", text:
`export ANTHROPIC_BASE_URL=${base}
export ANTHROPIC_API_KEY=$KAIXU_KEY
export ANTHROPIC_MODEL=${claude}
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
claude` },
    { id: "codex", title: "Codex", note: "Not supported yet: Codex speaks only OpenAI's Responses API, which kaixu does not serve (its requests get 404). For reference, $CODEX_HOME/config.toml:", lang: "toml", text:
`model_provider = "kaixu"
model = "${gpt}"

[model_providers.kaixu]
name = "kaixu"
base_url = "${base}/v1"
env_key = "KAIXU_KEY"
wire_api = "responses"` },
    { id: "gemini-cli", title: "Gemini CLI", note: "Needs its auth type in ~/.gemini/settings.json.", lang: "sh", text:
`mkdir -p ~/.gemini && cat > ~/.gemini/settings.json <<'EOF'
{"security": {"auth": {"selectedType": "gemini-api-key"}}, "telemetry": {"enabled": false}}
EOF
export GOOGLE_GEMINI_BASE_URL=${base}
export GEMINI_API_KEY=$KAIXU_KEY
gemini -m ${gemini}` },
    { id: "python-openai", title: "Python: OpenAI SDK", lang: "python", text:
`import os
from openai import OpenAI

client = OpenAI(base_url="${base}/v1", api_key=os.environ["KAIXU_KEY"])
reply = client.chat.completions.create(model="${gpt}", messages=[{"role": "user", "content": "Hi"}])
print(reply.choices[0].message.content)` },
    { id: "python-anthropic", title: "Python: Anthropic SDK", lang: "python", text:
`import os
from anthropic import Anthropic

client = Anthropic(base_url="${base}", api_key=os.environ["KAIXU_KEY"])
message = client.messages.create(model="${claude}", max_tokens=256, messages=[{"role": "user", "content": "Hi"}])
print(message.content[0].text)` },
    { id: "python-genai", title: "Python: Google Gen AI SDK", lang: "python", text:
`import os
from google import genai
from google.genai import types

client = genai.Client(api_key=os.environ["KAIXU_KEY"], http_options=types.HttpOptions(base_url="${base}"))
print(client.models.generate_content(model="${gemini}", contents="Hi").text)` },
    { id: "node-openai", title: "Node: OpenAI SDK", lang: "js", text:
`import OpenAI from "openai";

const client = new OpenAI({ baseURL: "${base}/v1", apiKey: process.env.KAIXU_KEY });
const reply = await client.chat.completions.create({ model: "${gpt}", messages: [{ role: "user", content: "Hi" }] });
console.log(reply.choices[0].message.content);` },
    { id: "curl", title: "curl", lang: "sh", text:
`curl ${base}/v1/chat/completions -H "Authorization: Bearer $KAIXU_KEY" \\
  -H 'content-type: application/json' \\
  -d '{"model": "${gpt}", "messages": [{"role": "user", "content": "Hello"}]}'` },
  ];
}

export async function render(main) {
  const data = await api("models");
  const models = data.models.filter(m => !m.glob).map(m => m.name);
  const globs = data.models.filter(m => m.glob).map(m => m.name);
  const base = location.origin;
  main.append(h("h1", {}, "Client setup"),
    h("section", { class: "card" },
      h("p", {}, "Base URL: ", h("code", { id: "base-url" }, base), ". Put a client key (not the admin key) in ", h("code", {}, "KAIXU_KEY"), " first:"),
      h("pre", {}, "export KAIXU_KEY=sk-...   # a key from the Keys page"),
      h("p", {}, "Models this gateway serves: ", models.map((m, i) => [i ? ", " : "", h("code", {}, m)])),
      globs.length ? h("p", { class: "muted" }, "Also any name matching: " + globs.join(", ")) : null),
    ...snippets(base, models).map(s => h("section", { class: "card snippet", "aria-labelledby": "snippet-" + s.id },
      h("div", { class: "head" }, h("h2", { id: "snippet-" + s.id }, s.title), copyButton(s.text, "Copy the " + s.title + " lines")),
      s.note ? h("p", { class: "muted" }, s.note) : null,
      h("pre", {}, h("code", { class: "language-" + s.lang }, s.text)))));
}
