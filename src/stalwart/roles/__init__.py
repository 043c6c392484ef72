"""Least-privilege roles: the NATS permissions and Redis ACL rules of each kind of process.

``admin`` provisions a namespace (``stalwart provision``); ``supervisor``, ``worker`` and
``client`` then run without any create or delete rights; ``viewer`` only reads. See
docs/security.md#least-privilege-roles.
"""

from stalwart.roles._nats import (
    ROLES,
    NatsPermissions,
    RoleName,
    inbox_prefix,
    nats_permissions,
    render_nats_permissions,
)
from stalwart.roles._redis import redis_acl_rules, render_redis_acl

__all__ = [
    "ROLES",
    "NatsPermissions",
    "RoleName",
    "inbox_prefix",
    "nats_permissions",
    "redis_acl_rules",
    "render_nats_permissions",
    "render_redis_acl",
]
