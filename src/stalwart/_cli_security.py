"""``stalwart provision`` and ``stalwart security ...``: least-privilege set-up commands.

See docs/security.md#least-privilege-roles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stalwart._exit_codes import EXIT_OK
from stalwart.errors import ConfigurationError
from stalwart.roles import ROLES, render_nats_permissions, render_redis_acl

if TYPE_CHECKING:
    import argparse

    from stalwart.config import Settings


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Add ``provision`` and ``security`` to the ``stalwart`` command's subcommands."""
    pv = sub.add_parser(
        "provision",
        parents=[common],
        help="create or update the namespace's streams, buckets and consumers (admin)",
    )
    pv.add_argument(
        "--agent",
        action="append",
        default=[],
        help="an agent whose workers' consumer to create (repeatable)",
    )
    pv.add_argument("--app", help="module:attribute of a stalwart.App: provision all its agents")
    pv.add_argument(
        "--build",
        help="with --app: the workers' build id, whose build lanes to provision too "
        "(default: derived from the app's code, as the workers derive it)",
    )
    sec = sub.add_parser("security", help="print NATS permissions and Redis ACL rules per role")
    what = sec.add_subparsers(dest="security_command", required=True)
    np = what.add_parser("nats-permissions", help="a nats-server permissions block for a role")
    ra = what.add_parser("redis-acl", help="an ACL SETUSER line for a role")
    for p in (np, ra):
        p.add_argument("--role", required=True, choices=ROLES)
        p.add_argument("--namespace", default="stalwart", help="default stalwart")
    ra.add_argument("--user", required=True, help="the Redis user name")
    ra.add_argument(
        "--password-sha256",
        default="",
        help="hex SHA-256 of the user's password (without it, set one with ACL SETUSER)",
    )


def cmd_security(args: argparse.Namespace) -> int:
    """Print the permissions or ACL line asked for (no server is contacted)."""
    try:
        if args.security_command == "nats-permissions":
            text = render_nats_permissions(args.role, args.namespace)
        else:
            text = render_redis_acl(
                args.role, args.namespace, args.user, password_sha256=args.password_sha256
            )
    except ValueError as exc:  # a bad user name or password hash: a usage error
        raise ConfigurationError(str(exc)) from None
    print(text, end="")
    return EXIT_OK


async def cmd_provision(args: argparse.Namespace, settings: Settings) -> int:
    """Connect to NATS with the admin's credentials and provision the namespace."""
    from stalwart._cli_commands import load_app
    from stalwart._local import resolve_client_settings
    from stalwart._transport import NatsSecurity
    from stalwart.broker._connect import connect
    from stalwart.broker._names import Names
    from stalwart.broker._provision import provision
    from stalwart.builds import derive_build

    agents, builds = list(args.agent), []
    if args.app:
        app = load_app(args.app)
        agents += [a for a in app.agents if a not in agents]
        # The consumer of the build lane the workers of this build pull (docs/deploys.md).
        builds = [settings.build or derive_build((n, s.fn) for n, s in app.agents.items())]
    if not settings.nats_url:
        settings = resolve_client_settings(settings)
    names = Names(settings.namespace)
    assert settings.nats_url  # resolved above
    nc = await connect(
        settings.nats_url,
        name="stalwart-provision",
        connect_timeout=settings.connect_timeout,
        security=NatsSecurity.from_settings(settings),
        inbox_prefix=names.inbox_prefix,
    )
    try:
        for line in await provision(nc.jetstream(), names, settings, agents, builds):
            print(line, flush=True)
    finally:
        await nc.close()
    return EXIT_OK
