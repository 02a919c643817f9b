"""The article workflow and what runs it: settings, LLM providers, nodes, flow, jobs, events."""
