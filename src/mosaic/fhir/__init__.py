"""FHIR R4 at ``/fhir``: the archive as the EHR reads it (``resources``: index rows as R4B resources, validated by
fhir.resources; ``search``: FHIR search parameters as the archive's queries; ``routes``: read, search, paging
Bundles, OperationOutcome errors, behind the same permissions, scopes and audit as every other door)."""
