"""Stripe simulator — a TEST DOUBLE, not Stripe.

An in-memory HTTP server that speaks the subset of Stripe's REST API this project calls
(customers, payment methods with Stripe's test cards, products/prices, Checkout Sessions with a
hosted page, billing portal, subscriptions, invoices, off-session PaymentIntents, events), with a
clock that can be advanced and signed webhook delivery. It exists so that `make run` and the
tests exercise the production code path (the real `stripe` SDK via `api_base`) with no Stripe
account and no internet.

Production code never imports this package; only dev scripts and tests start it, as a separate
process: `python -m stripe_sim --port P --webhook-url URL --webhook-secret S`.
"""

DEFAULT_API_VERSION = "2026-10-28.endive"
