"""Agent providers: a provider kind that runs a coding agent as a subprocess (`kind: claude-cli`, Claude Code
headless) instead of calling a model API. The agent's answer comes back as an OpenAI chat completion from kaixu's
loopback server, so every front door gets it through the existing translation; the agent's own model calls come
back into kaixu under the caller's key (`grants.py`). docs/claude-cli.md."""
