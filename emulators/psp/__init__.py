"""Stand-in for PayPal's and Adyen's sandboxes (systems we do not own), real paths and shapes.

``create_app(PspConfig)`` serves PayPal (OAuth2 token, Orders v2, capture refunds, the approve
link) and Adyen (Checkout v71 payments and refunds, the redirect action's issuer page, standard
webhooks signed with the HMAC key) on one port; ``create_admin_app`` serves the ``/_psp/*``
control API (fault knobs, call log, state, webhooks) on a loopback listener of its own.
Run it with ``python -m emulators.psp --port 8091`` (knobs on 127.0.0.1:8100).
"""

from __future__ import annotations

from emulators.psp.admin import create_admin_app
from emulators.psp.app import create_app
from emulators.psp.state import PspConfig

__all__ = ["PspConfig", "create_admin_app", "create_app"]
