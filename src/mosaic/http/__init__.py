"""The HTTP base every HTTP door builds on (DICOMweb, the pages and JSON API, and later FHIR and the portal).

- :mod:`mosaic.http.auth`: the authentication middleware (who asks), CSRF, the audit of every answer, and
  :func:`~mosaic.http.auth.require` for a route's permission;
- :mod:`mosaic.http.bodies`: reading a JSON request body (one answer to bad input);
- :mod:`mosaic.http.responses`: error answers (``{"error": …}``), ETag / ``304 Not Modified``, gzip;
- :mod:`mosaic.http.origin`: the origin a client reached Mosaic at (base URLs written into answers);
- :mod:`mosaic.http.headers`: headers on every answer (anti-framing);
- :mod:`mosaic.http.errors`: how exceptions become answers (HTTPException, index unavailable);
- :mod:`mosaic.http.protocol`: the h11 protocol with connection limits and deadlines.

It imports nothing of the doors: ``dicomweb``, ``web`` (and ``fhir``, the portal) build on it without importing
each other. Patient data is not read here: the services do that, with the caller's scope.
"""
