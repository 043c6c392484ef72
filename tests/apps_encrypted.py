"""Agents for the payload encryption tests (``tests.apps_encrypted:app``), run in real worker
processes whose keyring comes from ``STALWART_ENCRYPTION_KEYS_FILE``.

Every payload these agents handle carries the caller's marker secret: the input, step
results, a retried attempt's and a failed step's error messages, emitted event data, the
signal payload and the result. The tests then look for the marker everywhere the servers
keep anything.
"""

from __future__ import annotations

import os
from typing import Any

from stalwart import App, RetryPolicy, RunContext, StepFailed, current_step, durable
from stalwart.checkpoints import envelope_header, read_envelope_header
from stalwart.errors import PayloadKeyError
from tests.helpers import count_execution, wait_gate

app = App("encrypted")

_RETRY_ONCE = RetryPolicy(max_attempts=2, initial_interval=0.05, backoff=1.0, jitter=0.0)


async def echo(secret: str) -> str:
    await count_execution()
    return f"echo {secret}"


@durable(retry=_RETRY_ONCE)
async def flaky(secret: str) -> str:
    """Fails its first attempt (a journaled StepAttempt with the secret in its message)."""
    await count_execution()
    info = current_step()
    assert info is not None
    if info.attempt == 1:
        raise RuntimeError(f"first attempt leaks {secret}")
    return f"second attempt {secret}"


@durable(retry=RetryPolicy(max_attempts=1))
async def broken(secret: str) -> None:
    await count_execution()
    raise ValueError(f"broken step leaks {secret}")


@app.agent("vault")
async def vault(ctx: RunContext, inp: dict[str, Any]) -> dict[str, Any]:
    secret = inp["secret"]
    first = await ctx.step("echo", echo, secret)
    if inp.get("pause"):
        await wait_gate(ctx.run_id, "after")  # the test SIGKILLs the worker here
    second = await ctx.step("flaky", flaky, secret)
    try:
        await ctx.step("broken", broken, secret)
    except StepFailed as exc:
        failed = str(exc)
    await ctx.emit("note", {"secret": secret, "n": 1})
    signal = await ctx.wait_for_signal("approve")
    return {"first": first, "second": second, "failed": failed, "signal": signal}


@app.agent("vault_fails")
async def vault_fails(ctx: RunContext, secret: str) -> None:
    await ctx.step("echo", echo, secret)
    raise RuntimeError(f"the run fails and leaks {secret}")


@app.agent("rotating")
async def rotating(ctx: RunContext, secret: str) -> list[str]:
    """Two steps, a gate between them: written under one key, finished under another."""
    first = await ctx.step("first", echo, secret)
    await wait_gate(ctx.run_id, "after")
    second = await ctx.step("second", echo, secret + "-2")
    return [first, second]


class ToyKmsCodec:
    """A codec of one's own, as a KMS-backed one would be shaped: each payload gets a fresh
    data key, stored in the envelope wrapped (encrypted) by a master key the "KMS" holds.
    Not for use: the master key is a constant."""

    KEY_ID = "kms-1"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM
        self._master = AESGCM(b"\x07" * 32)  # what a KMS would hold

    def encode(self, data: bytes) -> bytes:
        header = envelope_header(self.KEY_ID)
        data_key, n1, n2 = os.urandom(32), os.urandom(12), os.urandom(12)
        wrapped = n1 + self._master.encrypt(n1, data_key, header)  # the KMS "wraps" it
        return header + wrapped + n2 + self._aead(data_key).encrypt(n2, data, header)

    def decode(self, data: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        kid, start = read_envelope_header(data)
        if kid != self.KEY_ID:
            raise PayloadKeyError(f"payload is sealed with {kid!r}, not {self.KEY_ID!r}", kid)
        header, body = data[:start], data[start:]
        try:
            data_key = self._master.decrypt(body[:12], body[12:60], header)
            return self._aead(data_key).decrypt(body[60:72], body[72:], header)  # type: ignore[no-any-return]
        except InvalidTag:
            raise PayloadKeyError("payload failed authentication", kid) from None


def toy_kms() -> ToyKmsCodec:
    """The factory ``STALWART_ENCRYPTION_CODEC=tests.apps_encrypted:toy_kms`` names."""
    return ToyKmsCodec()
