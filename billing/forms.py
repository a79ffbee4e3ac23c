"""Browser input of the billing endpoints, parsed by Django Forms. The same forms read a JSON body and a
dashboard form post; a refused field raises `InvalidRequest` with the field's stable code (the first bad
field, in the form's order), so views stay: parse, one service call, respond. Bounds that are billing
rules (pack counts, auto top-up limits) are checked by the services, which callers other than views
use too."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from billing_project.api import parse_json_body
from billing_project.errors import InvalidRequest

from .errors import BillingError
from .services import auto_topup, topup_purchases

#: Form values that mean "on" (checkboxes send "on" or their value; hidden inputs "true" / "1").
_TRUE = frozenset({"1", "true", "on", "yes"})


def is_form_post(request: HttpRequest) -> bool:
    """An HTML form post from the dashboard (answered with a redirect), not a JSON API call."""
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


def request_data(request: HttpRequest, *, empty_json: bool = True) -> dict[str, Any]:
    """The submitted fields: the form's, or the JSON body's (`empty_json`: an empty body is {})."""
    if is_form_post(request):
        return request.POST.dict()
    if empty_json and not request.body:
        return {}
    return parse_json_body(request)


class FlagField(forms.Field):
    """A checkbox / JSON boolean: true, or "1"/"true"/"on"/"yes" (any case); anything else is false.
    With `strict`, a JSON body must send a real boolean (`true` / `false`)."""

    def __init__(self, *, strict_message: str | None = None, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)
        self.strict_message = strict_message

    def to_python(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if self.strict_message is not None:
            raise ValidationError(self.strict_message, code="INVALID_REQUEST")
        return isinstance(value, str) and value.strip().lower() in _TRUE

    def validate(self, value: Any) -> None:  # a missing flag is false, never "required"
        pass


class WholeNumberField(forms.Field):
    """3, "3", " 3 ", "3.0", Decimal("3.00") -> 3; a bool, 1.5, "abc", missing -> `code`."""

    def __init__(self, *, what: str, code: str, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)
        self.what, self.code = what, code

    def to_python(self, value: Any) -> int:
        refused = ValidationError(f"{self.what} must be a whole number", code=self.code)
        if isinstance(value, bool) or value is None:
            raise refused
        if isinstance(value, int):
            return value
        try:
            number = Decimal(str(value).strip())
            if number.is_finite() and number == number.to_integral_value():
                return int(number)
        except (InvalidOperation, ValueError):
            pass
        raise refused

    def validate(self, value: Any) -> None:
        pass


class CreditsField(forms.Field):
    """A number of credits with at most two decimal places: 50, "75", "12.50", Decimal("12.5")."""

    def __init__(self, *, what: str, code: str, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)
        self.what, self.code = what, code

    def to_python(self, value: Any) -> Decimal:
        not_a_number = ValidationError(f"{self.what} must be a number of credits", code=self.code)
        if isinstance(value, bool) or value is None:
            raise not_a_number
        try:
            number = Decimal(str(value))
        except (InvalidOperation, ValueError):
            raise not_a_number from None
        try:
            exact = number.is_finite() and number == number.quantize(Decimal("0.01"))
        except InvalidOperation:  # too many digits to hold two decimal places
            exact = False
        if not exact:
            raise ValidationError(f"{self.what} must have at most two decimal places", code=self.code)
        return number

    def validate(self, value: Any) -> None:
        pass


def _checked(check: Any, value: Any) -> Any:
    """Run a service's bound check on a parsed value; its BillingError becomes this field's error."""
    try:
        check(value)
    except BillingError as exc:
        raise ValidationError(exc.message, code=exc.code) from None
    return value


class BillingForm(forms.Form):
    """`parse()` -> cleaned_data, or InvalidRequest with the first bad field's code and message."""

    #: form field name -> the `field` named in the error's JSON (e.g. {"field": "enabled"}); absent: none.
    error_fields: dict[str, str] = {}

    def parse(self) -> dict[str, Any]:
        if not self.is_valid():
            for name in self.fields:
                for error in self.errors.as_data().get(name, ()):
                    field = self.error_fields.get(name)
                    raise InvalidRequest(error.messages[0], code=error.code or "INVALID_REQUEST",
                                         extra={"field": field} if field else None)
        return self.cleaned_data


class TopupForm(BillingForm):
    """POST /api/billing/credits/topup: {packs, useSavedCard?}."""

    packs = WholeNumberField(what="packs", code="INVALID_PACKS")
    useSavedCard = FlagField()  # noqa: N815 - the API's field name

    def clean_packs(self) -> int:
        return _checked(topup_purchases.manual_packs_check, self.cleaned_data["packs"])


class AutoTopupSettingsForm(BillingForm):
    """POST /api/billing/credits/auto-topup: {enabled, threshold, packs, monthlyCapPacks}. A JSON body must
    send `enabled` as a boolean; the dashboard's unchecked checkbox is simply absent (off). The
    dashboard names the cap `monthly_cap_packs`."""

    error_fields = {"enabled": "enabled"}

    enabled = FlagField()
    threshold = CreditsField(what="threshold", code="INVALID_AUTO_TOPUP_THRESHOLD")
    packs = WholeNumberField(what="packs", code="INVALID_AUTO_TOPUP_PACKS")
    monthlyCapPacks = WholeNumberField(what="monthly cap", code="INVALID_AUTO_TOPUP_CAP")  # noqa: N815

    def __init__(self, data: dict[str, Any], *, json_body: bool) -> None:
        if "monthlyCapPacks" not in data and "monthly_cap_packs" in data:
            data = {**data, "monthlyCapPacks": data["monthly_cap_packs"]}
        super().__init__(data)
        if json_body:
            self.fields["enabled"] = FlagField(strict_message="enabled must be true or false")

    # The bounds, field by field in the form's order (the first bad field is the one reported).
    def clean_threshold(self) -> Decimal:
        return _checked(auto_topup.auto_topup_threshold_check, self.cleaned_data["threshold"])

    def clean_packs(self) -> int:
        return _checked(auto_topup.auto_topup_packs_check, self.cleaned_data["packs"])

    def clean_monthlyCapPacks(self) -> int:  # noqa: N802
        packs = self.cleaned_data.get("packs")
        cap = self.cleaned_data["monthlyCapPacks"]
        if packs is None:  # packs was refused: that is the error reported
            return cap
        return _checked(lambda value: auto_topup.auto_topup_cap_check(value, packs=packs), cap)


class PlanTierField(forms.Field):
    """A plan tier, any case: `planTier` (JSON), `plan` (dashboard) or `tier`; which tiers exist is the
    service's rule."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)

    def to_python(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValidationError("planTier is required (starter, pro or max)", code="INVALID_PLAN")
        return value.strip().lower()

    def validate(self, value: Any) -> None:
        pass


class PlanForm(BillingForm):
    """The plan of a checkout / upgrade / downgrade."""

    planTier = PlanTierField()  # noqa: N815 - the API's field name

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__({"planTier": data.get("planTier") or data.get("plan") or data.get("tier")})


class CancelForm(BillingForm):
    """POST /api/billing/subscription/cancel: {now?} (true: cancel at once, else at the period end)."""

    now = FlagField()
