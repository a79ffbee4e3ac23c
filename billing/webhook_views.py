"""POST /api/webhooks/stripe — Stripe's only way in. Thin: hand the raw body to the service.

400 + stable code (and a logged reason) for anything we refuse; 200 for a stored event and for a
duplicate delivery (acknowledged, not processed again). Processing happens in Celery on commit.
"""
from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing_project.api import json_api

from .services.webhooks import webhook_event_receive


@csrf_exempt
@require_POST
@json_api
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    receipt = webhook_event_receive(payload=request.body, sig_header=request.headers.get("Stripe-Signature", ""),
                                    now=timezone.now())
    return JsonResponse({"received": True, "duplicate": not receipt.created,
                         "eventId": receipt.event.stripe_event_id})
