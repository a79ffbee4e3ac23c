"""Billing's errors: one subclass of the project's AppError, with stable codes."""
from billing_project.errors import AppError


class BillingError(AppError):
    """A billing rule or a payment provider refused. `code` is stable (e.g. CREDITS_EXHAUSTED,
    CARD_DECLINED, STRIPE_UNAVAILABLE); the gateway maps every `stripe` error to one of these."""

    code = "BILLING_ERROR"
    http_status = 400
