"""docs/configuration.md, generated from the settings models (``mosaic config docs``)."""

from __future__ import annotations

from mosaic.config import RetentionRule, iter_options

HEAD = """\
# Configuration

Mosaic reads one TOML file (`mosaic serve --config FILE`, or the path in `MOSAIC_CONFIG`) and then
`MOSAIC_*` environment variables, which win over the file; nested options use a double underscore:
`MOSAIC_DICOM__PORT=11113`, `MOSAIC_STORAGE__BACKEND=s3`. `mosaic config show` prints the effective values.
`mosaic serve` also takes `--data-dir`, `--http-host`, `--http-port`, `--dicom-port`, `--hl7-port` and `--ae-title`.

Unknown keys are refused, at every depth (tables, `[[dicom.peers]]` and `[[retention.rules]]` items), and so
are `MOSAIC_*` variables that name no option: a typo never leaves a default in force. Every command then
says, one line per problem on stderr, where the value came from, the key and the reason, and exits with code 2:

```
mosaic: configuration error in /etc/mosaic/mosaic.toml: dicom.peers[2].may_stor: unknown key (did you mean may_store?)
mosaic: configuration error in the environment (MOSAIC_DICOM__PROT): dicom.prot: unknown key (did you mean port?)
mosaic: cannot listen on 0.0.0.0:11112 (DICOM): address already in use
```

Every command that opens the archive first says which one, on stderr (stdout stays for its answer):
`mosaic: data directory /srv/mosaic, index postgresql+psycopg://mosaic:***@db/mosaic` (passwords masked).
Only `mosaic serve` and `mosaic init` (first-time set-up: the data directory, the index and the `admin`
account, whose password it prints once) create an archive; every other command refuses a data directory
without an index, so one run from the wrong folder does not work on a new, empty archive.

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

## Retention rules

`retention.rules` is a list of tables, tried in order: the first rule that matches a study decides, and a
study no rule matches is kept forever. A rule matches when the study's facility, department and one of its
modalities match (`*` and `?` wildcards, case-insensitive) and, when set, the patient's age on the study date
is within `min_age_at_study` (inclusive) and `max_age_at_study` (exclusive); an age the rule needs but
cannot know keeps the study. Every rule needs a keep period, `keep_years_after_study` and/or
`keep_until_patient_age` (both: the later date wins); a rule without one, or with a key not listed here, is
refused at start-up. `mosaic retention dry-run` shows each study's verdict and why before anything is deleted.

{rule_table}

```toml
[retention]
grace_days = 30            # marked studies are purged this long after a run marked them

[[retention.rules]]        # minors: 10 years, and at least until they turn 25
name = "minors"
max_age_at_study = 18
keep_years_after_study = 10
keep_until_patient_age = 25

[[retention.rules]]        # mammography at one site: 10 years, then a cheaper tier
name = "mammo-site-a"
facilities = ["SITE-A"]
modalities = ["MG"]
keep_years_after_study = 10
action = "tier"

[[retention.rules]]        # every other CT or MR study: 7 years after the study
name = "ct-mr-7y"
modalities = ["CT", "MR"]
keep_years_after_study = 7
```

Each entry of `dicom.peers` has `ae_title`, `host`, `port` and the permissions `may_store`, `may_find`,
`may_move`, `may_get` (all true by default). An AE title not listed is served only when
`dicom.allow_unknown_calling_aes` is true; C-MOVE only sends to listed peers (others get status 0xA801).
A peer may also have `addresses` (where it may call from), `facility`/`department` (labels for what it stores),
`scope_facilities`/`scope_departments` (what it may find and retrieve), `tls` (Mosaic calls it with TLS) and
`certificate_names` (it is served only on the `dicom.tls` listener, with a client certificate of one of these
names: authenticated by certificate, not by its AE title alone).

Each entry of `hl7.senders` is an application that may send HL7 v2 messages over MLLP: `application` (its
MSH-3) and optionally `facility` (MSH-4; empty: any), `addresses` (where it may connect from), `may_send`
(message types: `ADT` patients, `ORM` orders for the Modality Worklist; default `["ADT"]`), `issuer` (the
IssuerOfPatientID of identifiers it sends without an assigning authority) and `patient_facility` (the facility
it speaks for: its orders' worklist steps are found by peers whose scope includes it). The HL7 listener runs
only when at least one sender is listed: any other sender's message is refused (`AR`) and audited.

```toml
[hl7]
port = 2575

[[hl7.senders]]            # the EHR's ADT feed
application = "EPIC"
facility = "GENHOSP"
may_send = ["ADT"]
issuer = "GENHOSP"
```

Each entry of `hl7.receivers` is an application Mosaic *sends* to: `name` (its outbox cursor is `hl7:<name>`),
`host`, `port`, `application` and `facility` (MSH-5, MSH-6), `events` (`["study-available"]`: an ORU^R01
"images available" once a study has been stable for `workflow.study_stable_seconds`), optionally `tls`
(with `tls_ca_file`), `timeout`, `retry_seconds` and `max_retry_seconds`. Each message waits for its ACK on the
connection: `AA`/`CA` delivered, anything else (or none) sent again later with the same MSH-10, so a receiver
that has seen that control ID can drop the copy (delivery is at least once, MSH-10 the idempotency key).
A receiver is sent the announcements made after its first start.

```toml
[workflow]
study_stable_seconds = 60  # no new image for a minute: the study is announced

[[hl7.receivers]]          # the EHR's results interface
name = "ehr"
host = "ehr.example.org"
port = 6661
application = "EPIC"
facility = "GENHOSP"
```

`ingest.duplicate_policy`: when an instance arrives whose SOP Instance UID is already stored with
*identical* bytes, it is a success and nothing is stored twice. With *different* bytes, `reject` (default)
answers 0x0111 (Duplicate SOP Instance) and keeps the stored one; `keep-new-version` stores the new one
as current and keeps the previous version (bytes and metadata) in the instance history.
"""


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for name, type_, default, doc in rows:
        escaped = type_.replace("|", "\\|")  # `str | None` would split the table's cell
        lines.append(f"| `{name}` | {escaped} | `{default}` | {doc} |")
    return "\n".join(lines)


def render() -> str:
    rule_rows = [(name, type_, "(required)" if name == "name" else default, doc)
                 for name, type_, default, doc in iter_options(RetentionRule)]
    return HEAD + _table(iter_options()) + "\n" + TAIL.replace("{rule_table}", _table(rule_rows))
