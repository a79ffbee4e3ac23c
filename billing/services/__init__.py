"""Billing services (writes), split by concern: balance.py, subscriptions.py, webhooks.py, topups.py.
Import from the submodule, e.g. `from billing.services.balance import balance_charge`."""
