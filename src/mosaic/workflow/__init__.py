"""Workflow over the services: de-identified export (later routing, tag morphing, AI dispatch)."""
