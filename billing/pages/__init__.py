"""Page contexts for the billing pages, one module per page (dashboard, plans, invoices): all the
arithmetic and decisions the templates need, so templates only print. Reads only; no writes, no Stripe."""
