"""The plan catalog: the one place the money facts live in code (docs/billing-rules.md states them).

Money is integer cents (`*_cents`); credits are exact `Decimal`s with two places. No floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from types import MappingProxyType

from organizations.models import PlanTier


class Tier:
    """Action tiers, cheapest first."""

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    XL = "xl"


TIERS: tuple[str, ...] = (Tier.SMALL, Tier.MEDIUM, Tier.LARGE, Tier.XL)

#: Credits one action of a tier costs.
TIER_CREDIT_COST: MappingProxyType[str, Decimal] = MappingProxyType({
    Tier.SMALL: Decimal("1.00"),
    Tier.MEDIUM: Decimal("2.50"),
    Tier.LARGE: Decimal("5.00"),
    Tier.XL: Decimal("15.00"),
})

#: Developer payout per action, in cents (recorded, not paid yet).
TIER_PAYOUT_CENTS: MappingProxyType[str, int] = MappingProxyType({
    Tier.SMALL: 2, Tier.MEDIUM: 5, Tier.LARGE: 10, Tier.XL: 30,
})


@dataclass(frozen=True)
class Plan:
    tier: str                      # organizations.models.PlanTier value
    name: str
    price_cents: int               # per month, USD
    included: MappingProxyType     # action tier -> actions included per period
    trial_eligible: bool
    rank: int                      # for upgrade/downgrade comparisons

    @property
    def allowance_credits(self) -> Decimal:
        """What the monthly allowance is worth at tier rates (45 / 975 / 9,900 / 49,500)."""
        return sum((TIER_CREDIT_COST[t] * n for t, n in self.included.items()), Decimal("0.00"))


def _plan(tier: str, name: str, price_cents: int, counts: tuple[int, int, int, int], rank: int) -> Plan:
    return Plan(tier=tier, name=name, price_cents=price_cents, included=MappingProxyType(dict(zip(TIERS, counts))),
                trial_eligible=price_cents > 0, rank=rank)


PLANS: MappingProxyType[str, Plan] = MappingProxyType({
    PlanTier.FREE: _plan(PlanTier.FREE, "Free", 0, (10, 4, 2, 1), 0),
    PlanTier.STARTER: _plan(PlanTier.STARTER, "Starter", 999, (250, 100, 50, 15), 1),
    PlanTier.PRO: _plan(PlanTier.PRO, "Pro", 9900, (2500, 1000, 500, 160), 2),
    PlanTier.MAX: _plan(PlanTier.MAX, "Max", 49999, (12500, 5000, 2500, 800), 3),
})
PAID_PLAN_TIERS: tuple[str, ...] = (PlanTier.STARTER, PlanTier.PRO, PlanTier.MAX)

TRIAL_DAYS = 7

#: The top-up pack.
TOPUP_PACK_CREDITS = Decimal("500.00")
TOPUP_PACK_PRICE_CENTS = 2000
CURRENCY = "usd"

#: Auto top-up defaults and bounds.
AUTO_TOPUP_DEFAULT_THRESHOLD = Decimal("50.00")
AUTO_TOPUP_DEFAULT_PACKS = 1
AUTO_TOPUP_DEFAULT_MONTHLY_CAP_PACKS = 10

CREDIT_QUANT = Decimal("0.01")


def plan_for(tier: str) -> Plan:
    return PLANS[tier]


def credits(value: Decimal | int | str) -> Decimal:
    """Normalize to an exact two-place credit amount (half-up). Refuses floats."""
    if isinstance(value, float):
        raise TypeError("credits are never floats")
    return Decimal(value).quantize(CREDIT_QUANT, rounding=ROUND_HALF_UP)


def topup_price(packs: int) -> tuple[Decimal, int]:
    """(credits, amount_cents) of `packs` top-up packs."""
    return credits(TOPUP_PACK_CREDITS * packs), TOPUP_PACK_PRICE_CENTS * packs


def soft_limit_buffer(*, included: int, buffer_percent: int) -> int:
    """Actions allowed past exhaustion as overage: `buffer_percent` of `included`, rounded up."""
    if buffer_percent <= 0 or included <= 0:
        return 0
    return int((Decimal(included) * Decimal(buffer_percent) / Decimal(100)).to_integral_value(rounding=ROUND_CEILING))


def format_cents(amount_cents: int, currency: str = CURRENCY) -> str:
    """`999` -> `$9.99` (display only)."""
    sign = "-" if amount_cents < 0 else ""
    amount_cents = abs(amount_cents)
    symbol = "$" if currency.lower() == "usd" else f"{currency.upper()} "
    return f"{sign}{symbol}{amount_cents // 100:,}.{amount_cents % 100:02d}"
