"""Model calls in LangGraph: tasks like any other node, journaled by ``_tools``.

LangGraph runs a model call as a task (``create_react_agent``'s ``agent`` node, a
``@task``), stores its writes before going on (``durability="sync"``) and skips it on resume.
The adapter therefore wraps no model: the stored task is the durable step, mirrored into the
journal by :class:`~stalwart.adapters.langgraph._tools.TaskJournal`. This module exists so
every adapter has the same files; a LangGraph-specific model hook would go here.
"""
