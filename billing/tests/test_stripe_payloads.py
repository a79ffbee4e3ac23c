"""The typed Stripe objects read what callers decide on from Stripe's answers, whether linked objects
come as ids or expanded, and keep the whole answer in `obj`. Pure: no database, no HTTP."""
from __future__ import annotations

from billing.stripe_payloads import (CheckoutSession, Customer, Invoice, PaymentMethod, PortalConfiguration, Price,
                                     stripe_ts)


def test_customer_default_card_as_id_or_expanded():
    plain = {"id": "cus_1", "email": "a@b.test", "metadata": {"orgId": "o1"},
             "invoice_settings": {"default_payment_method": "pm_1"}}
    assert Customer.from_stripe(plain).default_payment_method_id == "pm_1"
    expanded = {**plain, "invoice_settings": {"default_payment_method": {"id": "pm_2", "object": "payment_method"}}}
    customer = Customer.from_stripe(expanded)
    assert (customer.id, customer.email, customer.metadata, customer.default_payment_method_id) == (
        "cus_1", "a@b.test", {"orgId": "o1"}, "pm_2")
    assert Customer.from_stripe({"id": "cus_3", "invoice_settings": None}).default_payment_method_id is None
    assert customer.obj is expanded


def test_payment_method_card():
    pm = PaymentMethod.from_stripe({"id": "pm_1", "customer": "cus_1", "card": {"brand": "visa", "last4": "4242"}})
    assert (pm.id, pm.customer_id, pm.card_brand, pm.card_last4) == ("pm_1", "cus_1", "visa", "4242")


def test_price_recurring_and_one_time():
    plan = Price.from_stripe({"id": "price_1", "lookup_key": "plan_pro_monthly", "product": "prod_1",
                              "unit_amount": 9900, "currency": "usd", "recurring": {"interval": "month"}})
    assert (plan.product_id, plan.unit_amount_cents, plan.recurring_interval, plan.active) == (
        "prod_1", 9900, "month", True)
    pack = Price.from_stripe({"id": "price_2", "product": {"id": "prod_2"}, "unit_amount": 2000, "recurring": None,
                              "active": False})
    assert (pack.product_id, pack.recurring_interval, pack.active) == ("prod_2", None, False)


def test_portal_configuration_active_and_metadata():
    conf = PortalConfiguration.from_stripe({"id": "bpc_1", "active": False, "metadata": None})
    assert (conf.id, conf.active, conf.metadata) == ("bpc_1", False, {})


def test_invoice_payments_in_order_and_those_without_an_intent_counted():
    invoice = Invoice.from_stripe({
        "id": "in_1", "status": "open", "amount_due": 4000, "hosted_invoice_url": "https://pay/in_1",
        "payments": {"data": [{"payment": {"payment_intent": "pi_1"}}, {"payment": {}},
                              {"payment": {"payment_intent": {"id": "pi_2"}}}]}})
    assert invoice.payment_intent_ids == ("pi_1", "pi_2") and invoice.payment_count == 3
    assert (invoice.status, invoice.amount_due_cents, invoice.hosted_invoice_url) == ("open", 4000, "https://pay/in_1")
    empty = Invoice.from_stripe({"id": "in_2", "status": "open", "amount_due": None})
    assert (empty.payment_intent_ids, empty.payment_count, empty.amount_due_cents) == ((), 0, 0)


def test_checkout_session_with_an_expanded_subscription():
    obj = {"id": "cs_1", "status": "complete", "subscription": {"id": "sub_1", "status": "active"},
           "customer": "cus_1", "expires_at": 1794398400, "metadata": {"checkoutIntentId": "7"}}
    session = CheckoutSession.from_stripe(obj)
    assert (session.subscription_id, session.customer_id, session.expires_at) == (
        "sub_1", "cus_1", stripe_ts(1794398400))
    assert session.obj["subscription"]["status"] == "active"
