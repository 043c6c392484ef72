"""Stalwart's wire contract as an AsyncAPI 3.0 document, generated from the code.

``stalwart contract`` (or ``python -m stalwart.contract``) writes it; the committed copy is
``docs/contract/asyncapi.json``. See docs/contract.md for how a client in another language
uses it.
"""

from stalwart.contract._asyncapi import CONTRACT_VERSION, build_contract, render_contract

__all__ = ["CONTRACT_VERSION", "build_contract", "render_contract"]
