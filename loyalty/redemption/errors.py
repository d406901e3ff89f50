"""Why a redemption is refused: each a problem+json ``type`` channel apps can act on."""

from __future__ import annotations

from loyalty.errors import Conflict, InsufficientPoints, LoyaltyError, NotFound


class Refused(LoyaltyError):
    status = 422


class NotEligible(Refused):
    code = "not_eligible"
    title = "Not eligible for this benefit"


class LimitReached(Refused):
    code = "limit_reached"
    title = "Personal limit reached"


class OutOfStock(Refused):
    code = "out_of_stock"
    title = "Out of stock"


class BenefitInactive(Refused):
    code = "benefit_inactive"
    title = "Benefit not available"


class NotCancellable(Conflict):
    code = "not_cancellable"
    title = "This redemption cannot be cancelled"


class RedemptionNotFound(NotFound):
    code = "redemption_not_found"
    title = "No such redemption"


__all__ = [
    "BenefitInactive",
    "InsufficientPoints",
    "LimitReached",
    "NotCancellable",
    "NotEligible",
    "OutOfStock",
    "RedemptionNotFound",
]
