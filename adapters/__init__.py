"""Outbound I/O to systems we do not own, one client per file: ``paypal``, ``adyen`` (+ ``adyen_hmac``).

Shared by every client: ``retry`` (the one retry loop: same idempotency key on every attempt,
exponential backoff with full jitter, bounded attempts, a timeout per attempt), ``http`` (send one
request, never leak its headers), ``errors`` (what a caller can decide on: rejected for good, or
outcome unknown) and ``amounts`` (each PSP's currency decimals; money is Decimal).

The clients are thin and async (aiohttp): the official PayPal and Adyen SDKs are synchronous and do
not retry POSTs. They take their ``ClientSession`` and settings from the caller; nothing is created
at import time. Secrets (client secret, API key, HMAC key, bearer tokens) never appear in a repr,
an exception or a log line. Imports: ``common`` only.
"""
