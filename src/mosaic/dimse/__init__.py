"""DICOM networking (pynetdicom): thin SCP handlers that call the services, and SCU clients."""
