"""CDS Hooks 2.0 request model and this service's definitions (what discovery lists)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

REQUIRED_CONTEXT = {
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "patient-view": ("userId", "patientId"),
}
PREFETCH_KEYS = {
    "order-select": ("patient", "labs", "conditions", "administrations", "statements", "medications", "allergies",
                     "immunizations"),
    "order-sign": ("patient", "labs", "conditions", "administrations", "statements", "medications", "allergies",
                   "immunizations"),
    "patient-view": ("patient", "labs", "administrations", "statements", "medications"),
}
SERVICE_IDS = ("cd20-order-select", "cd20-order-sign", "cd20-patient-view")  # as services() defines them


class InvalidRequest(ValueError):
    """The body is not a CDS Hooks request this service can answer (HTTP 400); says what is wrong."""


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")
    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None

    def __repr__(self) -> str:  # never let the token reach a log line through repr()
        return "FhirAuthorization(access_token=***)"


class HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: str
    hookInstance: str
    context: dict[str, Any]
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] | None = None

    @field_validator("hookInstance", "hook")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _server_with_token(self) -> "HookRequest":
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization was sent without fhirServer")
        return self


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]

    def discovery(self) -> dict[str, Any]:
        return {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
                "prefetch": self.prefetch,
                "usageRequirements": "FHIR R4. Prefetch, or fhirServer with fhirAuthorization."}


def services(templates: dict[str, str]) -> dict[str, ServiceDefinition]:
    checks = ("HBV screening and serology, immunoglobulins, liver injury, neutrophils, infusion-reaction "
              "history, active infection, vaccines, PML, pregnancy, premedication, dose and dose interval")
    definitions = [
        ServiceDefinition("cd20-order-select", "order-select", "Anti-CD20 therapy safety checks (order select)",
                          f"Checks a newly selected anti-CD20 order (ocrelizumab, ofatumumab, ublituximab, "
                          f"rituximab) against the patient's record: {checks}.", _subset(templates, "order-select")),
        ServiceDefinition("cd20-order-sign", "order-sign", "Anti-CD20 therapy safety checks (order sign)",
                          f"Checks every anti-CD20 order about to be signed, and live vaccines ordered for a "
                          f"patient on anti-CD20 therapy: {checks}.", _subset(templates, "order-sign")),
        ServiceDefinition("cd20-patient-view", "patient-view", "Anti-CD20 therapy monitoring reminders",
                          "For a patient on anti-CD20 therapy: monitoring that is due or overdue (IgG, HBV DNA "
                          "for anti-HBc positive patients) and the next dose.", _subset(templates, "patient-view")),
    ]
    return {d.id: d for d in definitions}


def _subset(templates: dict[str, str], hook: str) -> dict[str, str]:
    return {key: templates[key] for key in PREFETCH_KEYS[hook]}


def parse(body: Any, service: ServiceDefinition) -> HookRequest:
    """A validated HookRequest for `service`, or InvalidRequest saying what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = HookRequest.model_validate(body)
    except ValidationError as e:
        raise InvalidRequest("; ".join(_describe(err) for err in e.errors()[:5])) from None
    if request.hook != service.hook:
        raise InvalidRequest(f"hook {request.hook!r} does not match service {service.id!r} ({service.hook})")
    missing = [f for f in REQUIRED_CONTEXT[service.hook] if f not in request.context]
    if missing:
        raise InvalidRequest(f"context is missing required field(s): {', '.join(missing)}")
    _check_context(request.context, service.hook)
    return request


def _check_context(context: dict[str, Any], hook: str) -> None:
    for name in ("userId", "patientId"):
        if not isinstance(context[name], str) or not context[name]:
            raise InvalidRequest(f"context.{name} must be a non-empty string")
    if hook != "patient-view" and not isinstance(context["draftOrders"], dict):
        raise InvalidRequest("context.draftOrders must be a FHIR Bundle (a JSON object)")
    if hook == "order-select":
        selections = context["selections"]
        if not isinstance(selections, list) or not all(isinstance(s, str) for s in selections):
            raise InvalidRequest("context.selections must be a list of references such as 'MedicationRequest/1'")


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "body"
    return f"{where}: {error['msg']}"
