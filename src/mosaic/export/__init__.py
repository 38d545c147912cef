"""De-identified export, as one capability: every part is here or named here.

- the de-identifier (pure: PS3.15 Annex E applied to one data set): :mod:`mosaic.governance.deid`, over the table
  :mod:`mosaic.governance.deid_table`
- writing de-identified copies to a folder or zip: :mod:`mosaic.export.writers`
- the service (checks, project secrets, manifests, the ``export`` job, sending to a peer or STOW-RS):
  :mod:`mosaic.export.service`
- ``/api/exports``: :mod:`mosaic.export.routes`
- ``mosaic export``: :mod:`mosaic.cli.export`
"""
