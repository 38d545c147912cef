"""docs/configuration.md, generated from the settings models (``mosaic config docs``)."""

from __future__ import annotations

from mosaic.config import iter_options

HEAD = '# Configuration\n\nMosaic reads one TOML file (`mosaic serve --config FILE`, or the path in `MOSAIC_CONFIG`) and then\n`MOSAIC_*` environment variables, which win over the file; nested options use a double underscore:\n`MOSAIC_DICOM__PORT=11113`, `MOSAIC_STORAGE__BACKEND=s3`. `mosaic config show` prints the effective values.\n`mosaic serve` also takes `--data-dir`, `--http-host`, `--http-port`, `--dicom-port` and `--ae-title`.\n\n```toml\ndata_dir = "/srv/mosaic"\n\n[dicom]\nae_title = "MOSAIC"\nport = 11112\nallow_unknown_calling_aes = false\n\n[[dicom.peers]]            # a modality allowed to store, and a C-MOVE destination\nae_title = "CT01"\nhost = "10.0.0.21"\nport = 104\nmay_find = false\n\n[index]\nurl = "postgresql+psycopg://mosaic@db.example.org/mosaic"\n\n[storage]\nbackend = "s3"\ns3_endpoint_url = "https://s3.example.org"\ns3_bucket = "mosaic-archive"\n```\n\n'

TAIL = "\nEach entry of `dicom.peers` has `ae_title`, `host`, `port` and the permissions `may_store`, `may_find`,\n`may_move`, `may_get` (all true by default). An AE title not listed is served only when\n`dicom.allow_unknown_calling_aes` is true; C-MOVE only sends to listed peers (others get status 0xA801).\n\n`ingest.duplicate_policy`: when an instance arrives whose SOP Instance UID is already stored with\n*identical* bytes, it is a success and nothing is stored twice. With *different* bytes, `reject` (default)\nanswers 0x0111 (Duplicate SOP Instance) and keeps the stored one; `keep-new-version` stores the new one\nas current and keeps the previous version (bytes and metadata) in the instance history.\n"


def render() -> str:
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    rows += [f"| `{name}` | {type_} | `{default}` | {doc} |" for name, type_, default, doc in iter_options()]
    return HEAD + "\n".join(rows) + "\n" + TAIL
