"""Durable jobs: long work (de-identified exports, retention runs) as rows in the index, with progress any
node can show, cancellation, and resumption after a node stops or crashes (``store``, ``runner``)."""
