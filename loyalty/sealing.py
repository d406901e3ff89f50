"""Secrets kept at rest: sealed with AES-GCM under a key derived from ``LOYALTY_SECRET_KEY``.

Each purpose derives its own keys from the root (``SHA-256(purpose ":encrypt:" root)`` and
``":digest:"``), the same derivation the voucher code pools use
(:class:`loyalty.catalogue.codes.CodeBox`, purpose ``voucher-codes``), and each sealed value is
bound to what it belongs to (its *context*: a subscription id), so a sealed value moved to
another row does not open. A database dump or backup alone reveals no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loyalty.errors import LoyaltyError

#: The root key must be at least this long.
MIN_KEY_LENGTH = 16


class SecretKeyMissing(LoyaltyError):
    """A secret must be sealed or opened and ``LOYALTY_SECRET_KEY`` is unset or too short."""

    status = 503
    code = "secret_key_missing"
    title = "The secret key is not configured"


class CannotOpen(LoyaltyError):
    """A sealed value does not open: it was sealed under another ``LOYALTY_SECRET_KEY``, or altered."""

    status = 500
    code = "cannot_open"
    title = "A stored secret cannot be opened"


class Sealer:
    """Seals, opens and digests values of one purpose under keys derived from one root secret."""

    def __init__(self, root: str, purpose: str) -> None:
        if len(root) < MIN_KEY_LENGTH:
            raise ValueError(f"LOYALTY_SECRET_KEY must be at least {MIN_KEY_LENGTH} characters")
        self.purpose = purpose
        self._aead = AESGCM(hashlib.sha256(f"{purpose}:encrypt:".encode() + root.encode()).digest())
        self._mac = hashlib.sha256(f"{purpose}:digest:".encode() + root.encode()).digest()

    def seal(self, context: str, value: str) -> str:
        """``value`` encrypted and bound to ``context``: URL-safe base64 of nonce, ciphertext and tag."""
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, value.encode(), context.encode())).decode()

    def open(self, context: str, sealed: str) -> str:
        """The value :meth:`seal` sealed for ``context``; :class:`CannotOpen` if it does not open."""
        raw = base64.urlsafe_b64decode(sealed.encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag:
            raise CannotOpen(
                f"a sealed {self.purpose} secret of {context!r} does not open under this LOYALTY_SECRET_KEY: "
                "it was sealed under another key (every node needs the same one), or altered",
                field="LOYALTY_SECRET_KEY",
            ) from None

    def digest(self, context: str, value: str) -> str:
        """A keyed digest of ``value``: equal values compare equal, and nothing can be guessed from it."""
        return hmac.new(self._mac, f"{context}\0{value}".encode(), hashlib.sha256).hexdigest()


def sealer(root: str, purpose: str, what: str) -> Sealer:
    """The sealer for ``purpose``; :class:`SecretKeyMissing` (503, naming the variable) while
    ``LOYALTY_SECRET_KEY`` is unset or short. ``what`` says what needs it, for the message."""
    if len(root) < MIN_KEY_LENGTH:
        raise SecretKeyMissing(
            f"{what} are stored encrypted under LOYALTY_SECRET_KEY, which "
            + ("is not set" if not root else f"is shorter than {MIN_KEY_LENGTH} characters")
            + f"; set it (at least {MIN_KEY_LENGTH} characters, the same on every node) and restart",
            field="LOYALTY_SECRET_KEY",
        )
    return Sealer(root, purpose)
