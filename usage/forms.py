"""Filters of the usage history page and its CSV export (GET parameters)."""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from django import forms

from billing.plans import TIERS

from .selectors import ActionFilters

TIER_LABELS = {"small": "Small", "medium": "Medium", "large": "Large", "xl": "XL"}
MAX_RANGE_DAYS = 400


class ActionFilterForm(forms.Form):
    tier = forms.ChoiceField(required=False, choices=[("", "All tiers")] + [(t, TIER_LABELS[t]) for t in TIERS])
    agent = forms.CharField(required=False, max_length=255, strip=True)
    date_from = forms.DateField(required=False, label="From")
    date_to = forms.DateField(required=False, label="To")

    def clean(self):
        data = super().clean()
        lo, hi = data.get("date_from"), data.get("date_to")
        if lo and hi and lo > hi:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> ActionFilters:
        """The valid filters (an invalid field is ignored, the page says why next to it)."""
        data = self.cleaned_data if self.is_bound and hasattr(self, "cleaned_data") else {}
        errors = self.errors if self.is_bound else {}
        lo = data.get("date_from") if "date_from" not in errors else None
        hi = data.get("date_to") if "date_to" not in errors else None
        return ActionFilters(
            tier=data.get("tier") or None if "tier" not in errors else None,
            agent_id=data.get("agent") or None if "agent" not in errors else None,
            date_from=lo if isinstance(lo, dt.date) else None,
            date_to=hi if isinstance(hi, dt.date) else None,
        )

    def querystring(self) -> str:
        """The active filters as a query string fragment (for pagination / export links)."""
        f = self.filters()
        pairs = [("tier", f.tier), ("agent", f.agent_id),
                 ("date_from", f.date_from.isoformat() if f.date_from else None),
                 ("date_to", f.date_to.isoformat() if f.date_to else None)]
        return urlencode([(k, v) for k, v in pairs if v])
