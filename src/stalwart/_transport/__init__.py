"""Transport security for NATS and Redis: TLS, mutual TLS and NATS credentials, parsed once.

Every process connects through here: workers, supervisors, clients and the CLI. Each server
gets one parsed set of options and one :class:`ssl.SSLContext`, built before the first
connection, so that a missing or unreadable CA, certificate, key, nkey seed or ``.creds``
file is a :class:`ConfigurationError` naming the setting and the file at once, instead of a
connection attempt that fails later (or, for a ``.creds`` file without a JWT, loops forever
inside nats-py).

Redis: the same context serves redis-py's pool and the journal pipe, so both agree on what
the URL says. The options are read from the ``rediss://`` URL's query, as redis-py reads
them (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``ssl_check_hostname``, ...), and from the ``redis_tls_*`` settings; the query is removed
from the URL both clients then parse, so neither builds a context of its own.
"""

from stalwart._transport._nats import NatsSecurity
from stalwart._transport._redis import RedisTarget, RedisTLS, redis_target

__all__ = ["NatsSecurity", "RedisTLS", "RedisTarget", "redis_target"]
