"""`{% idempotency_token %}`: the hidden one-time token of a money-moving dashboard form.

Each render makes a new token, so every page the user sees submits as a new request, while a double
submit (or a browser re-post) of that page repeats the same key: billing.idempotency replays the first
outcome instead of charging again."""
from __future__ import annotations

from django import template
from django.utils.html import format_html

from ..idempotency import FORM_FIELD, new_form_token

register = template.Library()


@register.simple_tag
def idempotency_token() -> str:
    return format_html('<input type="hidden" name="{}" value="{}">', FORM_FIELD, new_form_token())
