"""The exception tree: every error a handler can answer, with its stable code, HTTP status and French message.

Handlers never build error responses themselves: they raise, and `lib.web.http` maps the
exception to the contract's shape `{"error": {"code", "message", "details"?}}` in one place.

    DousellError                        (500 internal_error)
    ├── BadRequest                      400 bad_request
    │   └── MalformedJSON               400 malformed_json
    ├── AuthenticationRequired          401 authentication_required
    ├── InvalidToken                    401 invalid_token
    ├── Forbidden                       403 forbidden
    │   ├── NotYourLease                403 not_lease_party
    │   ├── InvalidSignature            403 invalid_signature
    │   └── AnonymousNotAllowed         403 anonymous_not_allowed
    ├── NotFound                        404 not_found
    ├── MethodNotAllowed                405 method_not_allowed
    ├── Conflict                        409 conflict
    │   ├── PaymentInProgress           409 payment_in_progress
    │   ├── AlreadyPaid                 409 already_paid
    │   ├── SlotTaken                   409 slot_taken
    │   ├── BookingInProgress           409 booking_in_progress
    │   ├── TooManyBookings             409 too_many_bookings
    │   ├── VisitStarted                409 visit_started
    │   └── AmountMismatch              409 amount_mismatch
    ├── PayloadTooLarge                 413 payload_too_large
    ├── ValidationFailed                422 validation_error
    │   ├── InvalidFilter               422 invalid_filter
    │   ├── IdempotencyKeyReused        422 idempotency_key_reused
    │   └── LeaseNotActive              422 lease_not_active
    ├── RateLimited                     429 rate_limited
    ├── PaymentProviderError            502 payment_provider_error
    ├── ServiceUnavailable              503 service_unavailable
    │   ├── DatabaseUnavailable         503 database_unavailable
    │   └── MetricsUnavailable          503 metrics_unavailable
    └── ConfigurationError              500 configuration_error

RateLimited answers with a Retry-After header. Errors that never reach a client (a Redis call
that failed, a lock that is busy) live beside the code that raises them and are translated by
their callers.
"""

from __future__ import annotations

from typing import Any


class DousellError(Exception):
    """Base of every error the API answers; subclasses fix `code`, `status` and `message`."""

    code = "internal_error"
    status = 500
    message = "Une erreur interne est survenue. Veuillez réessayer plus tard."
    # Why, in a fixed word safe for logs (`expired`, `jwks_unreachable`): lib.web.http logs it beside
    # the code; the client never sees it.
    reason: str | None = None

    def __init__(self, message: str | None = None, *, details: Any = None, headers: dict[str, str] | None = None,
                 reason: str | None = None) -> None:
        if message is not None:
            self.message = message
        self.details = details
        self.headers = headers or {}
        if reason is not None:
            self.reason = reason
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        """The contract's error body."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class BadRequest(DousellError):
    """The request cannot be read at all."""

    code, status = "bad_request", 400
    message = "La requête est mal formée."


class MalformedJSON(BadRequest):
    """The body is not a JSON object."""

    code = "malformed_json"
    message = "Le corps de la requête n'est pas un JSON valide."


class AuthenticationRequired(DousellError):
    """No bearer token was sent to an endpoint that needs one."""

    code, status = "authentication_required", 401
    message = "Veuillez vous connecter pour continuer."


class InvalidToken(DousellError):
    """The bearer token is expired, forged, or not one of ours."""

    code, status = "invalid_token", 401
    message = "Votre session n'est pas valide ou a expiré. Veuillez vous reconnecter."


class Forbidden(DousellError):
    """The caller is known but may not do this."""

    code, status = "forbidden", 403
    message = "Vous n'avez pas accès à cette ressource."


class NotYourLease(Forbidden):
    """The caller is neither the tenant nor the owner of the lease."""

    code = "not_lease_party"
    message = "Ce bail ne vous concerne pas."


class InvalidSignature(Forbidden):
    """A PayDunya callback whose hash does not match our master key."""

    code = "invalid_signature"
    message = "Signature de la notification invalide."


class AnonymousNotAllowed(Forbidden):
    """A write with an anonymous sign-in's token (`is_anonymous`): anyone gets one without an address."""

    code = "anonymous_not_allowed"
    message = ("Créez un compte (adresse e-mail ou numéro de téléphone) ou connectez-vous "
               "pour effectuer cette action.")


class NotFound(DousellError):
    """The resource does not exist, or is not visible to the caller."""

    code, status = "not_found", 404
    message = "Ressource introuvable."


class MethodNotAllowed(DousellError):
    """The endpoint exists but not with this HTTP method."""

    code, status = "method_not_allowed", 405
    message = "Méthode non autorisée pour cette adresse."

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(details={"allowed": allowed}, headers={"Allow": ", ".join(allowed)})
        self.allowed = allowed


class Conflict(DousellError):
    """The request conflicts with the current state."""

    code, status = "conflict", 409
    message = "Cette opération est en conflit avec l'état actuel."


class PaymentInProgress(Conflict):
    """Another request holds this lease's payment lock."""

    code = "payment_in_progress"
    message = "Paiement en cours. Veuillez patienter quelques secondes."


class AlreadyPaid(Conflict):
    """The rent for this lease and period is already paid."""

    code = "already_paid"
    message = "Le loyer de cette période est déjà payé."


class SlotTaken(Conflict):
    """The visit slot is already booked (or no longer offered)."""

    code = "slot_taken"
    message = "Ce créneau de visite n'est plus disponible."


class BookingInProgress(Conflict):
    """Another request is booking this slot right now."""

    code = "booking_in_progress"
    message = "Une réservation de ce créneau est en cours. Veuillez réessayer."


class TooManyBookings(Conflict):
    """The visitor already holds as many future visits as the cap allows (per property, or in all)."""

    code = "too_many_bookings"
    message = ("Vous avez atteint le nombre maximal de visites à venir (3 par bien, 10 au total). "
               "Annulez une visite pour en réserver une autre.")


class VisitStarted(Conflict):
    """A visit that has started, or is over, cannot be cancelled."""

    code = "visit_started"
    message = "Cette visite a déjà commencé ou est passée : elle ne peut plus être annulée."


class AmountMismatch(Conflict):
    """An IPN whose amount is not PayDunya's confirmed one, or not the payment's."""

    code = "amount_mismatch"
    message = "Le montant de la notification ne correspond pas au paiement."


class PayloadTooLarge(DousellError):
    """The body exceeds the 64 KiB cap."""

    code, status = "payload_too_large", 413
    message = "La requête est trop volumineuse (64 Kio au maximum)."


class ValidationFailed(DousellError):
    """Well-formed but invalid input; `details` lists each bad field."""

    code, status = "validation_error", 422
    message = "Certains champs sont invalides."


class InvalidFilter(ValidationFailed):
    """A search or list filter is unknown or out of range."""

    code = "invalid_filter"
    message = "Certains filtres de recherche sont invalides."


class IdempotencyKeyReused(ValidationFailed):
    """The same Idempotency-Key was sent with a different request."""

    code = "idempotency_key_reused"
    message = "Cette clé d'idempotence a déjà servi pour une autre requête."


class LeaseNotActive(ValidationFailed):
    """Rent can only be paid on an active lease."""

    code = "lease_not_active"
    message = "Ce bail n'est pas actif : aucun loyer ne peut être payé."


class RateLimited(DousellError):
    """Too many requests from one user (writes) or one address (refused IPNs); says when to retry."""

    code, status = "rate_limited", 429
    message = "Trop de requêtes. Veuillez patienter avant de réessayer."

    def __init__(self, retry_after: int) -> None:
        seconds = max(1, int(retry_after))
        super().__init__(f"Trop de requêtes. Veuillez réessayer dans {seconds} s.",
                         details={"retry_after": seconds}, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class PaymentProviderError(DousellError):
    """PayDunya failed, timed out or answered something unusable."""

    code, status = "payment_provider_error", 502
    message = "Le service de paiement est indisponible. Aucun montant n'a été débité, veuillez réessayer."


class ServiceUnavailable(DousellError):
    """A backing service is down."""

    code, status = "service_unavailable", 503
    message = "Le service est momentanément indisponible. Veuillez réessayer."


class DatabaseUnavailable(ServiceUnavailable):
    """The database (PostgREST) could not be reached in time."""

    code = "database_unavailable"
    message = "La base de données est momentanément indisponible. Veuillez réessayer."


class MetricsUnavailable(ServiceUnavailable):
    """Metrics live in Redis, which is down."""

    code = "metrics_unavailable"
    message = "Les métriques sont indisponibles : Redis ne répond pas."


class ConfigurationError(DousellError):
    """A variable this feature needs is not set; names the variable, never its value."""

    code, status = "configuration_error", 500
    message = "Le service est mal configuré. L'équipe technique a été prévenue."

    def __init__(self, variable: str, hint: str | None = None) -> None:
        super().__init__(details={"variable": variable})
        self.variable = variable
        self.hint = hint

    def __str__(self) -> str:
        text = f"missing environment variable {self.variable}"
        return f"{text} ({self.hint})" if self.hint else text
