"""Retention and legal hold, as one capability: every part is here or named here.

- the rules (pure: which study is due, and why): :mod:`mosaic.governance.retention`
- the hold rules and the check every deletion makes: :mod:`mosaic.governance.holds`
- placing, releasing and listing holds: :mod:`mosaic.retention.holds`
- the run (dry run, mark, purge): :mod:`mosaic.retention.service`
- a run as a durable job: :mod:`mosaic.retention.runs`; its schedule in ``mosaic serve``:
  :mod:`mosaic.retention.scheduler`
- ``/api/retention/*``, ``/api/holds``, ``DELETE /api/studies/{uid}``: :mod:`mosaic.retention.routes`
- ``mosaic retention | hold | delete``: :mod:`mosaic.cli.retention`
- deleting a study (the only remover, shared with every door): :class:`mosaic.services.delete.DeleteService`
"""
