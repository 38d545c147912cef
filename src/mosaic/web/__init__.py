"""HTTP: the ASGI app factory mounting operations, the admin API and (later) DICOMweb and the viewer."""
