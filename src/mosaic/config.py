"""Typed settings: one TOML file plus ``MOSAIC_*`` environment overrides.

Every option is declared here with its type, default and a one-line doc; this module is the
reference that ``docs/configuration.md`` and ``mosaic config show`` are built from.
Nested options are overridden from the environment with a double underscore, for example
``MOSAIC_DICOM__PORT=11113`` or ``MOSAIC_STORAGE__BACKEND=s3``.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from mosaic.core.errors import MosaicError

ENV_PREFIX = "MOSAIC_"


class ConfigurationError(MosaicError):
    """The configuration cannot be used. Each of ``problems`` is one line that names where the value came from
    (the file, an environment variable, the command line), the key and the reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StartupError(MosaicError):
    """The node cannot start as configured: a port it cannot listen on, an unusable data directory, no index.
    The message is one line for the operator."""


class StrictModel(BaseModel):
    """Base of every configuration table: an unknown key (a typo such as ``may_stor``) is refused, never
    silently ignored with the default left in force."""

    model_config = ConfigDict(extra="forbid")


class DuplicatePolicy(enum.StrEnum):
    """What to do when an instance arrives whose SOP Instance UID is stored with different bytes."""

    REJECT = "reject"
    """Refuse the new object (DIMSE status 0x0111 Duplicate SOP Instance); the stored one stays."""
    KEEP_NEW_VERSION = "keep-new-version"
    """Store the new object as current; the previous version stays in the instance history."""


class StorageBackend(enum.StrEnum):
    FILESYSTEM = "filesystem"
    S3 = "s3"


class HttpSettings(StrictModel):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP server (0 picks a free port).")
    public_url: str | None = Field(
        None, description="URL clients reach Mosaic at, e.g. https://pacs.example.org (behind a proxy); "
        "by default taken from each request's Host header.",
    )
    trusted_hosts: list[str] = Field(
        default_factory=list, description="Host names (as in the Host header) that absolute URLs in answers "
        "(BulkDataURIs, RetrieveURLs, the OpenID Connect redirect_uri) may be built from, besides http.host, "
        "public_url's host and localhost; a request with any other Host gets URLs of the address it connected to. "
        "[\"*\"] trusts any Host.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call Mosaic from a browser (CORS), e.g. "
        "[\"https://viewer.example.org\"]; [\"*\"] allows any. Empty: same origin only.",
    )
    viewer_dir: Path | None = Field(
        None, description="The built OHIF viewer served at /viewer/ (default: build/viewer of the source "
        "checkout, made by `make install`).",
    )
    tls_cert_file: Path | None = Field(None, description="Serve HTTPS with this certificate (PEM, with any "
                                       "intermediates); None: plain HTTP (e.g. behind a TLS-terminating proxy).")
    tls_key_file: Path | None = Field(None, description="The private key of tls_cert_file (PEM).")
    trusted_proxies: list[str] = Field(
        default_factory=list, description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For, "
        "Forwarded and X-Forwarded-Proto headers are believed: the client is then the right-most address they "
        "name that is not itself a trusted proxy. Empty: the socket's peer is the client, whatever it sends.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"http.trusted_proxies entry {entry!r} is not an address or network (CIDR)") from None
        return entries
    header_timeout_seconds: float = Field(
        20.0, gt=0, description="A request's line and headers must arrive within this time of the connection "
        "(or of the previous answer); else 408 and the connection is closed (slowloris).",
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0, description="While a request body is read, a connection that sends nothing for this long is "
        "closed (the upload is abandoned and nothing of it is kept).",
    )
    max_connections: int = Field(
        1000, ge=1, description="Open HTTP connections at most; one more is answered 503 with Retry-After and "
        "closed, so a flood of connections cannot take every file descriptor.",
    )
    max_connections_per_address: int = Field(
        0, ge=0, description="Of those, most from one IP address (the trusted_proxies excepted), so that one "
        "stranger holding unfinished requests cannot fill the door for everyone (0: a tenth of max_connections).",
    )

    @property
    def https(self) -> bool:
        return self.tls_cert_file is not None


class DicomPeer(StrictModel):
    """A known DICOM application entity: a modality, a PACS or a workstation."""

    ae_title: str = Field(description="The peer's AE title (at most 16 characters).")
    host: str = Field(description="Host name or address where the peer listens.")
    port: int = Field(ge=1, le=65535, description="TCP port where the peer listens.")
    may_store: bool = Field(True, description="The peer may send C-STORE to Mosaic.")
    may_find: bool = Field(True, description="The peer may query Mosaic with C-FIND.")
    may_move: bool = Field(True, description="The peer may ask Mosaic for C-MOVE.")
    may_get: bool = Field(True, description="The peer may retrieve from Mosaic with C-GET.")
    addresses: list[str] = Field(
        default_factory=list, description="Source addresses the peer may call from (empty: any address).",
    )
    facility: str = Field("", description="Facility given to studies this peer stores (empty: their InstitutionName).")
    department: str = Field(
        "", description="Department/specialty given to studies this peer stores (empty: their "
        "InstitutionalDepartmentName).",
    )
    scope_facilities: list[str] = Field(
        default_factory=lambda: ["*"], description="Facilities whose studies the peer may find and retrieve "
        "([\"*\"]: all).",
    )
    scope_departments: list[str] = Field(
        default_factory=lambda: ["*"], description="Departments whose studies the peer may find and retrieve "
        "([\"*\"]: all).",
    )
    tls: bool = Field(False, description="Mosaic connects to this peer with TLS (C-MOVE destination, storage "
                      "commitment results, exports), showing its dicom.tls certificate.")
    certificate_names: list[str] = Field(
        default_factory=list, description="Names (subject CN or DNS subject alternative name) one of which the "
        "peer's TLS client certificate must carry: the peer is then served only on the TLS listener, "
        "authenticated by its certificate, not by its AE title alone (empty: any caller with the AE title).",
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 16 or "\\" in value:
            raise ValueError(f"AE title {value!r} must be 1-16 characters without backslash")
        return value


class DicomTlsSettings(StrictModel):
    """A second DICOM listener that speaks TLS (PS3.15 B.1, the BCP 195 profile; IHE ATNA secure node):
    peers are authenticated by certificate, and what they send is encrypted."""

    enabled: bool = Field(False, description="Open the TLS listener.")
    port: int = Field(2762, ge=0, le=65535, description="Its TCP port (2762 is DICOM's registered TLS port; "
                      "0 picks a free port).")
    cert_file: Path | None = Field(None, description="Mosaic's certificate (PEM, with any intermediates), shown "
                                   "to callers and, as a client certificate, to peers Mosaic calls with TLS.")
    key_file: Path | None = Field(None, description="The private key of cert_file (PEM).")
    ca_file: Path | None = Field(None, description="CA certificates (PEM) that callers' and peers' certificates "
                                 "must chain to.")
    require_client_certificate: bool = Field(True, description="Refuse a caller without a valid client "
                                             "certificate (ATNA node authentication).")


class DicomSettings(StrictModel):
    ae_title: str = Field("MOSAIC", description="Mosaic's own AE title.")
    host: str = Field("127.0.0.1", description="Address the DICOM listener binds to.")
    port: int = Field(11112, ge=0, le=65535, description="TCP port of the DICOM listener (0 picks a free port).")
    max_associations: int = Field(32, ge=1, description="Most associations served at the same time (per worker).")
    workers: int = Field(
        1, ge=1, le=64, description="Processes serving the DICOM port together (SO_REUSEPORT): more than one "
        "uses more cores for C-STORE; the HTTP server stays in the main process.",
    )
    max_connections: int = Field(
        0, ge=0, description="Most TCP connections each DICOM door (plain, TLS) admits at once, associated or "
        "not; more are refused at once (0: four times max_associations).",
    )
    max_connections_per_address: int = Field(
        0, ge=0, description="Of those, most from one IP address, so that one stranger holding unfinished "
        "requests (or one misbehaving device) cannot fill a door for every other peer; a router or gateway that "
        "opens many associations at once may need more (0: a quarter of max_connections, at least max_associations).",
    )
    max_pdu_size: int = Field(
        0, ge=0, description="Largest P-DATA-TF Mosaic receives, in bytes (0: unlimited on the streaming C-STORE "
        "path, which never holds a PDU in memory; pynetdicom's associations then advertise 1 MiB).",
    )
    network_timeout: float = Field(60.0, gt=0, description="Seconds without network traffic before aborting.")
    streaming_store: bool = Field(
        True, description="Serve storage-only associations with Mosaic's streaming C-STORE receiver "
        "(false: pynetdicom serves every association).",
    )
    allow_unknown_calling_aes: bool = Field(
        False, description="Accept associations from AE titles not listed in `peers` (for every service, "
        "every study): only for a closed test network.",
    )
    peers: list[DicomPeer] = Field(
        default_factory=list, description="Known peers: move destinations and allowed callers."
    )
    tls: DicomTlsSettings = Field(default_factory=DicomTlsSettings)  # type: ignore[arg-type]


HL7_CHARSETS = ("ASCII", "8859/1", "8859/2", "8859/3", "8859/4", "8859/5", "8859/6", "8859/7", "8859/8", "8859/9",
                "8859/15", "UNICODE UTF-8", "ISO IR87", "ISO IR159", "ISO IR6", "ISO IR100", "ISO IR14", "GB 18030",
                "KS X 1001", "BIG-5")
"""Character sets of HL7 Table 0211 that Mosaic decodes (MSH-18)."""
HL7_MESSAGE_TYPES = ("ADT", "ORM", "OMI", "ORU", "MDM")
"""Message types (MSH-9.1) Mosaic applies: what ``hl7.senders[].may_send`` may name."""


class Hl7Sender(StrictModel):
    """An application allowed to send HL7 v2 messages to Mosaic (an EHR, a RIS, an ADT feed)."""

    application: str = Field(description="Its Sending Application (MSH-3, the namespace ID) as it sends it.")
    facility: str = Field("", description="Its Sending Facility (MSH-4, the namespace ID); empty: any.")
    addresses: list[str] = Field(
        default_factory=list, description="Source addresses it may connect from (empty: any address).",
    )
    may_send: list[str] = Field(
        default_factory=lambda: ["ADT"], description="Message types (MSH-9.1) it may send, e.g. [\"ADT\", \"ORM\"]; "
        "ORU (R01) and MDM (T02) reports are stored as DICOM objects of their study.",
    )
    issuer: str = Field(
        "", description="Issuer of Patient ID given to identifiers it sends without an assigning authority "
        "(PID-3.4); empty: none.",
    )
    patient_facility: str = Field(
        "", description="The facility it speaks for: the worklist steps of its orders are found by DICOM peers "
        "whose scope includes it.",
    )

    @field_validator("may_send")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        types = [item.strip().upper() for item in value if item.strip()]
        unknown = [item for item in types if item not in HL7_MESSAGE_TYPES]
        if unknown:  # a typo would otherwise leave the sender refused with no word at start-up
            raise ValueError(f"{', '.join(unknown)}: not a message type Mosaic applies "
                             f"({', '.join(HL7_MESSAGE_TYPES)})")
        return types


HL7_OUTBOUND_EVENTS = ("study-available",)
"""What an HL7 receiver may be sent (``hl7.receivers[].events``)."""


class Hl7Receiver(StrictModel):
    """An application Mosaic sends HL7 v2 messages to over MLLP (an EHR, a RIS): ORU^R01 "images available"."""

    name: str = Field(description="Names it in logs, audit records and its outbox cursor (`hl7:<name>`); keep it "
                      "once in use, or the new name starts over from the announcements made after its first start.",
                      min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")
    host: str = Field(description="Host name or address where it listens.")
    port: int = Field(ge=1, le=65535, description="Its MLLP port.")
    application: str = Field(description="Its Receiving Application (MSH-5).")
    facility: str = Field("", description="Its Receiving Facility (MSH-6).")
    events: list[str] = Field(
        default_factory=lambda: ["study-available"], description="What it is sent: study-available (ORU^R01 "
        "with the Study Instance UID, once a study has been stable for workflow.study_stable_seconds).",
    )
    tls: bool = Field(False, description="Connect over TLS (TLS 1.2 or later), checking its certificate against "
                      "tls_ca_file (else the system's CAs).")
    tls_ca_file: Path | None = Field(None, description="CA certificates (PEM) its certificate must chain to.")
    timeout: float = Field(30.0, gt=0, description="Seconds to connect, and to wait for the ACK of a message.")
    retry_seconds: float = Field(5.0, gt=0, description="Wait before sending again after a failure (no ACK, AE/AR, "
                                 "connection refused); doubled while failures go on.")
    max_retry_seconds: float = Field(300.0, gt=0, description="Longest wait between attempts.")
    max_refusals: int = Field(
        10, ge=1, description="AE/AR answers to one message before it is set aside (audited as not delivered, "
        "logged as an error) so that the announcements after it go out; no answer, a closed connection or a "
        "timeout is retried without limit.",
    )

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        unknown = [item for item in value if item not in HL7_OUTBOUND_EVENTS]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an event Mosaic sends ({', '.join(HL7_OUTBOUND_EVENTS)})")
        return value


class Hl7Settings(StrictModel):
    host: str = Field("127.0.0.1", description="Address the HL7 v2 (MLLP) listener binds to.")
    port: int = Field(
        2575, ge=0, le=65535, description="TCP port of the HL7 v2 listener (0 picks a free port). It listens "
        "only when `senders` names at least one application: an unknown sender is refused anyway.",
    )
    default_charset: str = Field(
        "8859/1", description="Character set (HL7 Table 0211) of messages without MSH-18.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest message accepted (an ORU with an embedded PDF is large).",
    )
    idle_timeout: float = Field(
        300.0, gt=0, description="Seconds a connection may stay silent before Mosaic closes it.",
    )
    max_connections: int = Field(
        64, ge=1, description="Most MLLP connections served at once (each holds a thread); more are closed at once.",
    )
    senders: list[Hl7Sender] = Field(
        default_factory=list, description="Applications that may send messages (matched on MSH-3 and MSH-4).",
    )
    tls_cert_file: Path | None = Field(
        None, description="Speak MLLP over TLS (TLS 1.2 or later) with this certificate (PEM, with any "
        "intermediates); every connection must then shake hands first.",
    )
    tls_key_file: Path | None = Field(None, description="The private key of tls_cert_file (PEM).")
    tls_ca_file: Path | None = Field(
        None, description="CA certificates (PEM) a sender's client certificate must chain to; given, a sender "
        "without such a certificate is refused (mutual TLS).",
    )
    receivers: list[Hl7Receiver] = Field(
        default_factory=list, description="Applications Mosaic sends messages to (ORU^R01 \"images available\"), "
        "each from the outbox under its own cursor: retried with backoff, resumed after a restart.",
    )

    @field_validator("default_charset")
    @classmethod
    def _check_charset(cls, value: str) -> str:
        if value.strip().upper() not in HL7_CHARSETS:
            raise ValueError(f"character set {value!r} is not one of {', '.join(HL7_CHARSETS)}")
        return value.strip().upper()

    @field_validator("receivers")
    @classmethod
    def _check_receivers(cls, value: list[Hl7Receiver]) -> list[Hl7Receiver]:
        names = [receiver.name for receiver in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # one name is one outbox cursor: two receivers would each miss what the other was sent
            raise ValueError(f"receiver name(s) {', '.join(twice)} given more than once (each names its outbox cursor)")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Hl7Settings:
        # a key or CA without the certificate would otherwise leave MLLP in plain text with no word at start-up
        if (self.tls_key_file is not None or self.tls_ca_file is not None) and self.tls_cert_file is None:
            raise ValueError("tls_key_file / tls_ca_file are given without tls_cert_file: MLLP over TLS needs the "
                             "listener's certificate")
        return self


class WorkflowSettings(StrictModel):
    """When a study counts as complete: what the "study available" announcements (HL7, FHIR) wait for."""

    study_stable_seconds: float = Field(
        60.0, ge=0, description="A study is announced available once no instance has arrived for it for this "
        "long (again after a later change); 0 turns the announcements off.",
    )
    sweep_seconds: float = Field(
        5.0, gt=0, description="How often `mosaic serve` looks for studies that have become stable (at most; "
        "more often when study_stable_seconds is shorter).",
    )


class FhirSettings(StrictModel):
    """The FHIR door's Subscriptions (R4 Subscriptions Backport IG, rest-hook, the study-available topic)."""

    notification_timeout_seconds: float = Field(
        10.0, gt=0, description="Seconds to wait for a subscriber's endpoint to answer a notification.",
    )
    retry_seconds: float = Field(5.0, gt=0, description="Wait before notifying again after a failure (no answer, "
                                 "not 2xx); doubled while failures go on.")
    max_retry_seconds: float = Field(300.0, gt=0, description="Longest wait between attempts.")
    subscription_endpoints: list[str] = Field(
        default_factory=list, description="URL prefixes a Subscription's channel.endpoint must start with (e.g. "
        "[\"https://ehr.example.org/notify/\"]; plain http only where a prefix names it). Empty: any https URL "
        "whose host is not a loopback, link-local, multicast or reserved address.",
    )
    max_subscriptions_per_account: int = Field(20, ge=1, description="Subscriptions one account may hold at once.")


class StorageSettings(StrictModel):
    backend: StorageBackend = Field(StorageBackend.FILESYSTEM, description="Where blobs live: filesystem or s3.")
    path: Path | None = Field(None, description="Folder of the filesystem backend (default: <data_dir>/blobs).")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint URL (None: AWS default).")
    s3_bucket: str = Field("mosaic", description="S3 bucket holding the blobs.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_access_key_id: str | None = Field(None, description="S3 access key (None: the boto3 default chain).")
    s3_secret_access_key: str | None = Field(None, description="S3 secret key (None: the boto3 default chain).")
    s3_create_bucket: bool = Field(False, description="Create the bucket at start-up if it is missing.")
    min_free_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="Filesystem backend: /healthz reports storage not ok (503) when the "
        "blob folder's file system has less free space than this.",
    )
    sweep_age_seconds: int = Field(
        3600, ge=0, description="At start-up, spool files and filesystem blob files that no index row names are "
        "removed when they were last written this long before the process started (one log line gives the count; "
        "`mosaic verify --repair` removes partial orphans no younger than this). It must exceed the longest write "
        "another process or node may still have in flight on the same storage: a STOW-RS request whose first "
        "parts wait for its last, a `mosaic import`. 1 hour suits nodes sharing a blob store; a single node whose "
        "server is the only writer may use 0 (everything older than the start). S3 buckets are not swept.",
    )


class IndexSettings(StrictModel):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the index (default: SQLite at <data_dir>/index.sqlite; "
        "postgresql+psycopg://… for PostgreSQL).",
    )
    pool_size: int = Field(10, ge=1, description="Connections kept open to PostgreSQL.")


class IngestSettings(StrictModel):
    duplicate_policy: DuplicatePolicy = Field(
        DuplicatePolicy.REJECT,
        description="Same SOP Instance UID with different bytes: reject, or keep-new-version.",
    )
    bulk_data_threshold: int = Field(
        1024, ge=16, description="Values larger than this (bytes) are left out of the indexed metadata."
    )


class OidcSettings(StrictModel):
    """OpenID Connect bearer tokens (JWT) from the hospital's identity provider."""

    issuer: str | None = Field(None, description="The issuer (`iss`) accepted; None turns OpenID Connect off.")
    audience: str = Field("mosaic", description="The audience (`aud`) a token must name.")
    jwks_url: str | None = Field(None, description="Where the issuer's signing keys are (JWKS); default: the "
                                 "jwks_uri of <issuer>/.well-known/openid-configuration.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], description="Accepted signatures.")
    username_claim: str = Field("preferred_username", description="Claim naming the user (else `sub`).")
    roles_claim: str = Field("roles", description="Claim listing the user's Mosaic roles.")
    facilities_claim: str = Field("facilities", description="Claim listing the facilities the user may see "
                                  "(absent: all).")
    departments_claim: str = Field("departments", description="Claim listing the departments the user may see "
                                   "(absent: all).")
    leeway_seconds: int = Field(30, ge=0, description="Clock skew allowed on `exp` and `nbf`.")
    client_id: str | None = Field(None, description="Mosaic's client id at the provider: turns on single sign-on "
                                  "for the web pages and the viewer (authorization code flow with PKCE); the "
                                  "redirect URI to register is <public URL>/login/oidc/callback.")
    client_secret: str | None = Field(None, description="The client's secret (None: a public client, PKCE only).")
    authorization_endpoint: str | None = Field(None, description="Default: from <issuer>/.well-known/"
                                               "openid-configuration.")
    token_endpoint: str | None = Field(None, description="Default: from <issuer>/.well-known/"
                                       "openid-configuration.")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile"], description="Scopes asked for at "
                              "sign-in (the claims above must reach the ID token).")
    provider_name: str = Field("the hospital's sign-in", description="How the sign-in page names the provider.")


class SyslogSettings(StrictModel):
    """The audit repository that receives DICOM PS3.15 audit messages (RFC 5424 syslog)."""

    host: str | None = Field(None, description="Collector host; None: audit messages stay in Mosaic only.")
    port: int = Field(514, ge=1, le=65535, description="Collector port.")
    protocol: str = Field("tcp", pattern="^(tcp|tls|udp)$", description="tcp (RFC 6587 octet counting), tls "
                          "(RFC 5425, as IHE ATNA asks) or udp.")
    tls_ca_file: Path | None = Field(None, description="CA certificates the collector's certificate must chain to "
                                     "(tls; default: the system's).")
    tls_cert_file: Path | None = Field(None, description="Mosaic's own certificate for mutual TLS (ATNA node "
                                       "authentication), PEM.")
    tls_key_file: Path | None = Field(None, description="The private key of tls_cert_file, PEM.")
    retry_seconds: float = Field(5.0, gt=0, description="Wait before retrying an unreachable collector.")
    app_name: str = Field("mosaic", description="APP-NAME of each syslog message.")


class SecuritySettings(StrictModel):
    development_mode: bool = Field(
        False, description="Serve every HTTP route without credentials (as an administrator). Only for a "
        "developer's own machine: never with patient data.",
    )
    initial_admin_password: str | None = Field(
        None, description="Password of the `admin` account created at the first start (None: a random one, "
        "printed once).",
    )
    session_hours: float = Field(12.0, gt=0, description="How long a browser sign-in lasts.")
    secure_cookies: bool = Field(False, description="Mark the session cookie Secure (set true behind HTTPS).")
    audit_batch_seconds: float = Field(0.25, gt=0, le=60, description="How long the audit writer gathers records "
                                       "before one transaction appends them (what is gathered is journaled to "
                                       "<data_dir>/audit-journal and survives a crash).")
    credential_cache_seconds: float = Field(
        10.0, ge=0, description="How long a checked token or session is trusted before the index is asked "
        "again (a revoked token stops working within this time).",
    )
    break_glass_hours: float = Field(4.0, gt=0, description="How long a break-glass opening of a study lasts.")
    sign_in_delay_seconds: float = Field(
        1.0, gt=0, description="After 5 wrong passwords for one account from one client address, that pair waits "
        "this long before the next try, doubling with each further failure (other addresses are not slowed).",
    )
    sign_in_max_delay_seconds: float = Field(
        900.0, gt=0, description="The longest wait of one account and client address after wrong passwords.",
    )
    failed_sign_ins_per_client_minute: int = Field(
        20, ge=1, description="Wrong passwords one client address may send per minute, whatever the accounts; "
        "beyond it its password sign-ins are answered 429 with Retry-After until the minute has passed.",
    )
    concurrent_password_checks: int = Field(
        0, ge=0, description="Passwords checked (argon2id) at the same time on this node; a sign-in that finds no "
        "free slot within a second is answered 503 with Retry-After. 0: half the processor cores (at least 1).",
    )
    roles: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra or redefined roles: name → permissions (query, read, store, "
        "modify, delete, export, administer, read-audit).",
    )
    oidc: OidcSettings = Field(default_factory=OidcSettings)  # type: ignore[arg-type]
    audit_syslog: SyslogSettings = Field(default_factory=SyslogSettings)  # type: ignore[arg-type]
    audit_signing_key_file: Path | None = Field(
        None, description="Ed25519 private key (PEM) that signs the audit trail's checkpoints (default: "
        "<data_dir>/audit-signing-key.pem, made at the first start; keep it where the index's writers cannot "
        "read it, see docs/audit.md).",
    )
    audit_verify_key_file: Path | None = Field(
        None, description="Public keys (PEM, one or more: one per node) that checkpoints must be signed with; "
        "enough for `mosaic audit verify` (default: the public half of audit_signing_key_file).",
    )
    audit_anchor_file: Path | None = Field(
        None, description="Append-only file of signed checkpoints of the audit chain (default: "
        "<data_dir>/audit-anchors.jsonl; put it on a volume the index's database cannot rewrite).",
    )
    audit_checkpoint_seconds: float = Field(
        1.0, ge=0, le=3600, description="At most this long between the audit writer's commit and the signed "
        "checkpoint that anchors it (0: after every batch); records newer than the last checkpoint can be cut "
        "off undetected.",
    )


class LaunchEhr(StrictModel):
    """An EHR that may launch Mosaic's portal or viewer with a signed, expiring, single-use link
    (``/IHEInvokeImageDisplay`` or ``/smart/launch`` with ``user``, ``expires``, ``nonce`` and ``signature``,
    the hex HMAC-SHA256 of the link's canonical query with this EHR's secret; docs/launch.md)."""

    name: str = Field(description="Names the EHR in audit records and in a link's optional `ehr` parameter.",
                      min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")
    secret_file: Path = Field(description="File holding the shared secret (its first line, at least 32 bytes; "
                              "never the secret itself in the configuration). Read at start-up: keep it readable "
                              "by Mosaic's user only.")
    users_may_be: list[str] = Field(
        default_factory=lambda: ["*"], description="Mosaic accounts this EHR may launch as ([\"*\"]: any enabled "
        "account). The account must exist and be enabled either way.",
    )
    max_lifetime_seconds: int = Field(
        300, ge=1, le=3600, description="Longest a link may be valid: one whose `expires` is further in the "
        "future than this (plus the clock skew) is refused.",
    )


class LaunchSettings(StrictModel):
    """EHR image enablement: IHE Invoke Image Display at `/IHEInvokeImageDisplay` and a SMART-style launch at
    `/smart/launch`, for a signed-in browser (single sign-on) or a signed link from an EHR in `ehrs`."""

    ehrs: list[LaunchEhr] = Field(
        default_factory=list, description="EHRs that may send signed launch links, each a table: `name`, "
        "`secret_file` (the shared secret, read from that file), `users_may_be` (account names, or [\"*\"]) and "
        "`max_lifetime_seconds` (300). Empty: only signed-in browsers can launch.",
    )
    clock_skew_seconds: int = Field(
        30, ge=0, le=600, description="Allowed difference between the EHR's clock and Mosaic's on `expires`.",
    )

    @field_validator("ehrs")
    @classmethod
    def _check_names(cls, value: list[LaunchEhr]) -> list[LaunchEhr]:
        names = [ehr.name for ehr in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # a link's `ehr` parameter must name one secret
            raise ValueError(f"{', '.join(repeated)}: more than one EHR of this name")
        return value


class RetentionRule(StrictModel):
    """One retention policy: which studies it covers and how long they are kept. The first rule that matches a
    study decides; a study that no rule matches is kept forever."""

    name: str = Field(description="Shown in dry runs, audit records and logs, e.g. 'adults-7y'.")
    facilities: list[str] = Field(default_factory=lambda: ["*"], description="Facilities covered ([\"*\"]: all).")
    departments: list[str] = Field(default_factory=lambda: ["*"], description="Departments/specialties covered.")
    modalities: list[str] = Field(default_factory=lambda: ["*"], description="Modalities covered (any modality of "
                                  "the study).")
    min_age_at_study: float | None = Field(None, ge=0, description="Only patients at least this old (years) on the "
                                           "study date.")
    max_age_at_study: float | None = Field(None, ge=0, description="Only patients younger than this (years) on "
                                           "the study date.")
    keep_years_after_study: float | None = Field(None, ge=0, description="Keep at least this many years after the "
                                                 "study date.")
    keep_until_patient_age: float | None = Field(None, ge=0, description="Keep at least until the patient reaches "
                                                 "this age (years), e.g. 25 for minors.")
    action: str = Field("delete", pattern="^(delete|tier)$", description="delete, or tier (move to a cheaper "
                        "storage tier, once tiers exist).")

    @model_validator(mode="after")
    def _check_keep_period(self) -> RetentionRule:
        # without one the rule would let every study it matches go at once
        if self.keep_years_after_study is None and self.keep_until_patient_age is None:
            raise ValueError(f"retention rule {self.name!r} has no keep period: set keep_years_after_study "
                             "and/or keep_until_patient_age")
        return self


class RetentionSettings(StrictModel):
    rules: list[RetentionRule] = Field(default_factory=list, description="Retention policies, first match wins "
                                       "(empty: keep everything).")
    grace_days: float = Field(30.0, ge=0, description="Days between marking a study for deletion and purging it "
                              "(a legal hold placed meanwhile saves it).")
    schedule_hours: float = Field(0.0, ge=0, description="Run retention every this many hours in `mosaic serve` "
                                  "(0: only when run by hand, `mosaic retention run`).")


class ExportSettings(StrictModel):
    """Where de-identified exports may go."""

    folder: Path | None = Field(None, description="Folder that HTTP-requested folder and zip exports are written "
                                "under (default: <data_dir>/exports); the command line may write anywhere.")
    dicomweb_destinations: dict[str, str] = Field(
        default_factory=dict, description="Named STOW-RS endpoints de-identified exports may be sent to, e.g. "
        "{research = \"https://research.example.org/dicom-web\"}.",
    )


class SharingSettings(StrictModel):
    """Links that share studies with people outside the hospital (``/shares``, ``/share/<token>``)."""

    default_days: int = Field(7, ge=1, description="Days a new link stays valid when its creator gives no expiry.")
    max_days: int = Field(30, ge=1, description="Longest a link may stay valid, in days (a longer expiry is "
                          "refused).")
    max_studies: int = Field(20, ge=1, le=500, description="Most studies one link carries (all of one patient).")
    pin_attempts: int = Field(5, ge=1, le=100, description="Wrong PINs a link takes before it locks (an "
                              "administrator or its creator then makes a new one).")
    session_minutes: int = Field(60, ge=1, le=24 * 60, description="Minutes a recipient's browser stays let in "
                                 "after opening a link (the `mosaic_share` cookie; never past the link's expiry).")
    refusals_per_minute: int = Field(20, ge=1, description="Refused link openings (unknown tokens, wrong PINs, "
                                     "expired or revoked links) one client address may have a minute; beyond, it "
                                     "waits (HTTP 429).")


class JobSettings(StrictModel):
    """Durable jobs: de-identified exports and retention runs are rows in the index that any node shows."""

    workers: int = Field(1, ge=0, le=16, description="Jobs one `mosaic serve` runs at a time (0: this node runs "
                         "none; another node on the same index does).")
    poll_seconds: float = Field(2.0, gt=0, description="How often an idle node looks for queued jobs (a job "
                                "submitted on the node itself starts at once).")
    stale_seconds: float = Field(120.0, ge=10, description="A running job whose node has not reported for this "
                                 "long is taken to be interrupted (the node crashed or was stopped) and is "
                                 "queued again.")
    max_attempts: int = Field(3, ge=1, description="Runs a job gets (the first and its resumptions after "
                              "interruptions) before it is failed.")


class LogSettings(StrictModel):
    level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    json_format: bool = Field(False, description="Write logs as one JSON object per line.")


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``MOSAIC_CONFIG`` (or given to :func:`load_settings`)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._path is None:
            return {}
        with open(self._path, "rb") as toml_file:
            return tomllib.load(toml_file)


class Settings(BaseSettings):
    """The whole of Mosaic's configuration."""

    model_config = SettingsConfigDict(env_prefix="MOSAIC_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("./mosaic-data"), description="Folder for the index, blobs and state.")
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    dicom: DicomSettings = Field(default_factory=DicomSettings)  # type: ignore[arg-type]
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)  # type: ignore[arg-type]
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)  # type: ignore[arg-type]
    fhir: FhirSettings = Field(default_factory=FhirSettings)  # type: ignore[arg-type]
    storage: StorageSettings = Field(default_factory=StorageSettings)  # type: ignore[arg-type]
    index: IndexSettings = Field(default_factory=IndexSettings)  # type: ignore[arg-type]
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    log: LogSettings = Field(default_factory=LogSettings)  # type: ignore[arg-type]
    security: SecuritySettings = Field(default_factory=SecuritySettings)  # type: ignore[arg-type]
    retention: RetentionSettings = Field(default_factory=RetentionSettings)  # type: ignore[arg-type]
    export: ExportSettings = Field(default_factory=ExportSettings)  # type: ignore[arg-type]
    jobs: JobSettings = Field(default_factory=JobSettings)  # type: ignore[arg-type]
    launch: LaunchSettings = Field(default_factory=LaunchSettings)  # type: ignore[arg-type]
    sharing: SharingSettings = Field(default_factory=SharingSettings)  # type: ignore[arg-type]

    _config_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("MOSAIC_CONFIG")
        return (init_settings, env_settings, _TomlSource(settings_cls, Path(path) if path else None))

    @property
    def index_url(self) -> str:
        return self.index.url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def viewer_path(self) -> Path:
        if self.http.viewer_dir is not None:
            return self.http.viewer_dir.resolve()
        return Path(__file__).resolve().parents[2] / "build" / "viewer"

    @property
    def export_path(self) -> Path:
        return (self.export.folder or self.data_dir / "exports").resolve()

    @property
    def blob_path(self) -> Path:
        return (self.storage.path or self.data_dir / "blobs").resolve()


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings: explicit overrides, then ``MOSAIC_*`` env, then the TOML file.

    Raises :class:`ConfigurationError` with one line per problem (unknown keys included, at any depth)."""
    path = config_file or (Path(os.environ["MOSAIC_CONFIG"]) if os.environ.get("MOSAIC_CONFIG") else None)
    document = _read_toml(path)
    unknown = _unknown_environment()
    if unknown:
        raise ConfigurationError(unknown)
    previous = os.environ.get("MOSAIC_CONFIG")
    if config_file is not None:
        os.environ["MOSAIC_CONFIG"] = str(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError([_describe(error, path, document, overrides) for error in exc.errors()]) from exc
    except SettingsError as exc:
        raise ConfigurationError([f"configuration error in the environment: {exc}"]) from exc
    finally:  # the file applies to these settings only, not to every later Settings() of the process
        if config_file is not None:
            if previous is None:
                del os.environ["MOSAIC_CONFIG"]
            else:
                os.environ["MOSAIC_CONFIG"] = previous


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as toml_file:
            return tomllib.load(toml_file)
    except OSError as exc:
        raise ConfigurationError([f"cannot read the configuration file {path}: {_reason(exc)}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError([f"configuration error in {path}: not valid TOML: {exc}"]) from exc


def _reason(exc: OSError) -> str:
    """``[Errno 98] Address already in use`` as ``address already in use``."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _environment() -> dict[str, tuple[str, ...]]:
    """Every ``MOSAIC_*`` variable (except MOSAIC_CONFIG) with the option path it sets, e.g. ('dicom', 'port')."""
    return {name: tuple(name[len(ENV_PREFIX):].lower().split("__")) for name in os.environ
            if name.upper().startswith(ENV_PREFIX) and name.upper() != "MOSAIC_CONFIG"}


def _env_name(path: Sequence[str | int]) -> str:
    return ENV_PREFIX + "__".join(str(part) for part in path).upper()


def _unknown_environment() -> list[str]:
    """MOSAIC_* variables naming no option: pydantic-settings skips them, so a typo would pass unnoticed."""
    known = [_env_name(name.split(".")) for name, _type, _default, _doc in iter_options()]
    problems = []
    for name, path in sorted(_environment().items()):
        if path[0] not in Settings.model_fields:
            guess = difflib.get_close_matches(name.upper(), known, n=1)
            problems.append(f"configuration error in the environment: {name}: unknown option"
                            + (f" (did you mean {guess[0]}?)" if guess else ""))
    return problems


def _key(loc: Sequence[str | int]) -> str:
    """('dicom', 'peers', 2, 'may_stor') as ``dicom.peers[2].may_stor``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((model for arg in typing.get_args(annotation) if (model := _model_in(arg))), None)
    return None


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The configuration table at ``loc`` (list items and dict values looked through)."""
    current: Any = Settings
    for part in loc:
        model = _model_in(current)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            current = model.model_fields[part].annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
    return _model_in(current)


def _holds(document: Mapping[str, Any], loc: Sequence[str | int]) -> bool:
    value: Any = document
    for part in loc:
        found = part in value if isinstance(value, Mapping) else (
            isinstance(value, list) and isinstance(part, int) and part < len(value))
        if not found:
            return False
        value = value[part]
    return True


def _describe(error: Any, path: Path | None, document: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """One pydantic error as ``configuration error in <where>: <key>: <reason>``."""
    loc = tuple(part for part in error["loc"] if isinstance(part, (str, int)))
    given = loc[:-1] if error["type"] == "missing" else loc
    variable = next((name for name, env_path in _environment().items() if given[:len(env_path)] == env_path), None)
    if _holds(overrides, given):
        where = "the command line"
    elif variable is not None:
        where = f"the environment ({variable})"
    elif path is not None:
        where = str(path.resolve())
    else:
        where = "the settings"
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), list(model.model_fields) if model else [], n=1)
        reason = "unknown key" + (f" (did you mean {guess[0]}?)" if guess else "")
    elif error["type"] == "missing":
        reason = "required key missing"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        reason = message[:1].lower() + message[1:] if message[1:2].islower() else message  # not "aE title"
        if not isinstance(error.get("input"), (dict, list)):
            reason += f" (got {error.get('input')!r})"
    return f"configuration error in {where}: {_key(loc) or '(top level)'}: {reason}"


def iter_options(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """List every option as (dotted name, type, default, doc), for documentation and `config show`."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(iter_options(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        type_name = getattr(annotation, "__name__", str(annotation)).replace("typing.", "")
        rows.append((f"{prefix}{name}", str(type_name), repr(default), field.description or ""))
    return rows
