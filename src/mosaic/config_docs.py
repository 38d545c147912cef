"""docs/configuration.md, generated from the settings models (``mosaic config docs``)."""

from __future__ import annotations

from mosaic.config import iter_options

HEAD = """\
# Configuration

Mosaic reads one TOML file (`mosaic serve --config FILE`, or the path in `MOSAIC_CONFIG`) and then
`MOSAIC_*` environment variables, which win over the file; nested options use a double underscore:
`MOSAIC_DICOM__PORT=11113`, `MOSAIC_STORAGE__BACKEND=s3`. `mosaic config show` prints the effective values.
`mosaic serve` also takes `--data-dir`, `--http-host`, `--http-port`, `--dicom-port` and `--ae-title`.

```toml
data_dir = "/srv/mosaic"

[dicom]
ae_title = "MOSAIC"
port = 11112
allow_unknown_calling_aes = false

[[dicom.peers]]            # a modality allowed to store, and a C-MOVE destination
ae_title = "CT01"
host = "10.0.0.21"
port = 104
may_find = false

[index]
url = "postgresql+psycopg://mosaic@db.example.org/mosaic"

[storage]
backend = "s3"
s3_endpoint_url = "https://s3.example.org"
s3_bucket = "mosaic-archive"
```

"""

TAIL = """\

Each entry of `dicom.peers` has `ae_title`, `host`, `port` and the permissions `may_store`, `may_find`,
`may_move`, `may_get` (all true by default). An AE title not listed is served only when
`dicom.allow_unknown_calling_aes` is true; C-MOVE only sends to listed peers (others get status 0xA801).
A peer may also have `addresses` (where it may call from), `facility`/`department` (labels for what it stores),
`scope_facilities`/`scope_departments` (what it may find and retrieve), `tls` (Mosaic calls it with TLS) and
`certificate_names` (it is served only on the `dicom.tls` listener, with a client certificate of one of these
names: authenticated by certificate, not by its AE title alone).

`ingest.duplicate_policy`: when an instance arrives whose SOP Instance UID is already stored with
*identical* bytes, it is a success and nothing is stored twice. With *different* bytes, `reject` (default)
answers 0x0111 (Duplicate SOP Instance) and keeps the stored one; `keep-new-version` stores the new one
as current and keeps the previous version (bytes and metadata) in the instance history.
"""


def render() -> str:
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {type_} | `{default}` | {doc} |" for name, type_, default, doc in iter_options()]
    return HEAD + "\n".join(rows) + "\n" + TAIL
