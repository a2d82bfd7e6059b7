"""The patient's record as it comes: the prefetch templates and what a request brings, what is fetched
from its FHIR server, only this patient's data, and FHIR references. No clinical meaning here."""
