"""View decorator resolving the current org for a logged-in user.

Usage:
    @org_view(require_admin=True)
    def view(request, membership): ...

The org comes from the `org` query parameter / form field / JSON `orgId` (UUID or slug), or
the `org_ref` URL kwarg, else the user's first org. Non-members: 404; non-admins on
money-moving views: 403 (JSON for /api/ paths, a page otherwise).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from billing_project.api import app_error_response
from billing_project.errors import AppError, AuthenticationRequired

from .selectors import membership_for


def _org_ref_from_request(request: HttpRequest, kwargs: dict) -> str | None:
    if kwargs.get("org_ref"):
        return kwargs.pop("org_ref")
    ref = request.GET.get("org") or request.GET.get("orgId") or request.POST.get("org") or request.POST.get("orgId")
    if not ref and request.content_type == "application/json" and request.body:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("orgId"), str):
            ref = body["orgId"]
    return ref or None


def org_view(*, require_admin: bool = False) -> Callable:
    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            is_api = request.path.startswith("/api/")
            if not request.user.is_authenticated:
                if is_api:
                    return app_error_response(request, AuthenticationRequired("log in first", code="NOT_AUTHENTICATED"),
                                              as_json=True)
                return redirect_to_login(request.get_full_path())
            try:
                membership = membership_for(user=request.user, org_ref=_org_ref_from_request(request, kwargs),
                                            require_admin=require_admin)
            except AppError as exc:
                return app_error_response(request, exc, as_json=is_api)
            request.membership = membership
            request.org = membership.organization
            return view(request, membership, *args, **kwargs)

        return wrapper

    return decorator
