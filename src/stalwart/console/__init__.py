"""``stalwart console``: a web console over a deployment (runs, workers, agents, actions).

Needs the ``console`` extra (Starlette and uvicorn): ``pip install 'stalwart[console]'``.
See docs/operations.md for what it shows and docs/security.md for how it is protected.
"""

from stalwart.console._app import create_app
from stalwart.console._auth import Guard, new_token
from stalwart.console._server import serve

__all__ = ["Guard", "create_app", "new_token", "serve"]
