"""What goes wrong finding or running an embedded server."""

from __future__ import annotations


class ServerError(RuntimeError):
    """Base class for failures to find or run an embedded server."""


class ServerNotFound(ServerError):
    """No usable server binary was found; the message says how to install one."""


class ServerStartError(ServerError):
    """The server process exited or did not become healthy in time; the message has its log."""


class RoutePortTaken(ServerStartError):
    """A cluster node's route port was taken before it could bind it. Its peers name that
    port, so the node cannot pick another alone: the cluster picks new route ports for every
    node (see ``NatsCluster.start``)."""
