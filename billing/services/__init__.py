"""Billing services (writes), split by concern: balance.py, plan_changes.py, subscription_sync.py,
webhooks.py, dunning.py, topup_purchases.py, auto_topup.py, grants.py, accounts.py, health.py.
Import from the submodule, e.g. `from billing.services.balance import balance_charge`."""
