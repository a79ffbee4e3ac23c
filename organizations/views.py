from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing_project.errors import NotFound

from .access import org_view
from .forms import ApiKeyCreateForm, EmailAuthenticationForm
from .selectors import api_keys_for_org
from .services import api_key_create, api_key_revoke


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    authentication_form = EmailAuthenticationForm
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


def _api_keys_page(request: HttpRequest, membership, *, form=None, issued=None, status: int = 200) -> HttpResponse:
    resp = render(request, "organizations/api_keys.html", {
        "org": membership.organization, "membership": membership, "can_manage": membership.is_admin,
        "keys": api_keys_for_org(organization=membership.organization),
        "form": form or ApiKeyCreateForm(), "issued": issued, "page_path": "/settings/api-keys",
    }, status=status)
    if issued is not None:
        resp["Cache-Control"] = "no-store"  # the secret is on this page; never cache it
    return resp


@require_GET
@org_view()
def api_keys(request: HttpRequest, membership) -> HttpResponse:
    return _api_keys_page(request, membership)


@require_POST
@org_view(require_admin=True)
def api_key_create_view(request: HttpRequest, membership) -> HttpResponse:
    form = ApiKeyCreateForm(request.POST)
    if not form.is_valid():
        return _api_keys_page(request, membership, form=form, status=400)
    issued = api_key_create(organization=membership.organization, name=form.cleaned_data["name"],
                            created_by=request.user, now=timezone.now())
    # Rendered (not redirected) so the secret exists only in this one response.
    return _api_keys_page(request, membership, issued=issued)


@require_POST
@org_view(require_admin=True)
def api_key_revoke_view(request: HttpRequest, membership, key_id: int) -> HttpResponse:
    try:
        key = api_key_revoke(organization=membership.organization, key_id=key_id, now=timezone.now())
    except NotFound:
        raise Http404("API key not found") from None
    messages.success(request, f"API key “{key.name}” (bk_{key.prefix}_…) is revoked.")
    return redirect(f"/settings/api-keys?org={membership.organization.slug}")
