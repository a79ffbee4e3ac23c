"""Billing models, split by concern. Each submodule's models are re-exported here.

balance.py       CreditBalance (per-org cache of the current period)       — credit engine
subscriptions.py Subscription                                              — Stripe subscriptions
webhooks.py      WebhookEvent                                              — Stripe webhooks
invoices.py      Invoice                                                   — Stripe webhooks
purchases.py     CreditPurchase                                            — top-ups
request_idempotency.py RequestIdempotency (Idempotency-Key / form tokens)    — browser endpoints
allowances.py    AllowanceChange (prorated upgrades within a period)       — subscriptions
"""
from .subscriptions import *  # noqa: E402,F401,F403
from .webhooks import *  # noqa: E402,F401,F403
from .invoices import *  # noqa: E402,F401,F403
from .balance import *  # noqa: E402,F401,F403
from .purchases import *  # noqa: E402,F401,F403
from .checkout_intents import *  # noqa: E402,F401,F403
from .request_idempotency import *  # noqa: E402,F401,F403
from .allowances import *  # noqa: E402,F401,F403
