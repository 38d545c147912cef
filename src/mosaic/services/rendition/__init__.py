"""What egress makes of a stored instance other than its bytes as stored: frames and bulk data found by offset
(``frames``), an Explicit VR Little Endian copy (``transcode``), rendered images and thumbnails (``rendered``), and the
transfer syntaxes they reason about (``syntaxes``). Doors ask :class:`mosaic.services.retrieve.RetrieveService` for
the stored bytes and these modules for what to make of them."""
