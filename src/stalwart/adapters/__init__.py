"""Framework adapters (one module per framework) — see the adapter issues."""
