"""Leaf package: identifiers, DICOM helpers, errors and event types. Imports nothing internal."""
