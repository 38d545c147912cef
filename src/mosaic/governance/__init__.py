"""Governance: identity, the access policy, the audit trail, retention and legal hold, de-identification."""
