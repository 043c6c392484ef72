"""Framework adapters: one package per framework, each with the same shape.

Each keeps the framework's own agent loop and turns its model and tool calls into durable
steps through :meth:`stalwart.RunContext.call`, built from :mod:`stalwart.kit`. Import the
package of your framework (``stalwart.adapters.openai_agents``, ...); its dependencies come
with the matching extra. Every package has the same modules: ``_runner`` (the runner),
``_model`` (model calls as steps), ``_tools`` (tool calls as steps), ``_codec`` (pure
translations between the framework's objects and journaled data), plus framework extras.
"""

from stalwart.kit import DurableRunner, StreamReset, canonical_fp, default_app, text_digest

__all__ = ["DurableRunner", "StreamReset", "canonical_fp", "default_app", "text_digest"]
