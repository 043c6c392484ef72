"""Framework adapters: one module per framework, each with the same shape.

Each keeps the framework's own agent loop and turns its model and tool calls into durable
steps through :meth:`stalwart.RunContext.call`. Import the module of your framework
(``stalwart.adapters.openai_agents``, ...); its dependencies come with the matching extra.
"""

from stalwart.adapters._base import DurableRunner, canonical_fp, default_app, text_digest

__all__ = ["DurableRunner", "canonical_fp", "default_app", "text_digest"]
