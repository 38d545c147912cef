"""Wrong passwords hold back whoever sends them, never the real user elsewhere (issue 8): counted per account and
client address with growing waits, limited per client address across accounts, and checked (argon2id) a few at
a time; and the client address is the socket's unless a configured proxy forwards for someone (issue 3).

Clients are told apart by their source address: Linux loopback accepts binding any 127/8 address, so one
machine plays the attacker at 127.0.0.1 and the real user at 127.0.0.2 (httpx ``local_address``, pynetdicom
``bind_address``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from mosaic.app import Mosaic
from mosaic.config import DicomPeer, DicomSettings, HttpSettings, SecuritySettings, Settings
from mosaic.governance.identity import SignInRefused, _SignInThrottle
from tests.dimse_support import MOSAIC_AE
from tests.factory import make_instance, to_bytes
from tests.helpers import LOCALHOST, wait_until

ATTACKER = "127.0.0.1"
REAL_USER = "127.0.0.2"
PROXY = "127.0.0.9"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosaic]:
    """Checked credentials are not cached (every try reaches the throttle); the first wait (60 s) outlasts
    each test, so no test depends on how fast the machine is."""
    security = SecuritySettings(initial_admin_password="admin-password-1", credential_cache_seconds=0,  # type: ignore[call-arg]
                                sign_in_delay_seconds=60, concurrent_password_checks=1)
    workstation = DicomPeer(ae_title="WORKSTATION", host=LOCALHOST, port=104)  # type: ignore[call-arg]
    mosaic = Mosaic(Settings(data_dir=tmp_path_factory.mktemp("throttle"),  # type: ignore[call-arg]
                             http=HttpSettings(port=0, trusted_proxies=[PROXY, "10.1.0.0/16"]),  # type: ignore[call-arg]
                             dicom=DicomSettings(ae_title=MOSAIC_AE, port=0, peers=[workstation]),  # type: ignore[call-arg]
                             security=security))
    mosaic.start()
    mosaic.ingest.store(to_bytes(make_instance(patient_id="P-1")), door="import")
    yield mosaic
    mosaic.stop()


@contextmanager
def client_at(node: Mosaic, address: str) -> Iterator[httpx.Client]:
    """An HTTP client whose connections come from ``address``."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=f"http://{LOCALHOST}:{node.http_port}", transport=transport, timeout=60) as client:
        yield client


def sign_in_records(node: Mosaic, user: str) -> list[Any]:
    node.audit.flush()
    return node.audit.search(action="login", user=user, limit=1000)[0]


def test_wrong_passwords_from_one_client_do_not_lock_the_user_out_from_another(node: Mosaic) -> None:
    node.identity.add_user("clin.a", roles=["clinician"], password="the-real-password")
    with client_at(node, ATTACKER) as attacker, client_at(node, REAL_USER) as real_user:
        for attempt in range(5):
            guess = attacker.get("/api/me", auth=("clin.a", f"guess-{attempt}"))
            assert guess.status_code == 401 and "wrong password" in guess.json()["error"]
        held_back = attacker.get("/api/me", auth=("clin.a", "the-real-password"))  # even the right one
        assert held_back.status_code == 429 and "too many wrong passwords" in held_back.json()["error"]
        assert 1 <= int(held_back.headers["retry-after"]) <= 60
        me = real_user.get("/api/me", auth=("clin.a", "the-real-password"))
        assert me.status_code == 200 and me.json()["name"] == "clin.a"
        typo = real_user.get("/api/me", auth=("clin.a", "the-real-passwort"))  # the user's own count is new
        assert typo.status_code == 401
        assert attacker.get("/api/me", auth=("clin.a", "guess-9")).status_code == 429  # still waiting
        # the sign-in form from each client alike
        attacker.get("/login")
        form = attacker.post("/login", data={"username": "clin.a", "password": "the-real-password",
                                             "csrf_token": attacker.cookies["mosaic_login_csrf"]})
        assert form.status_code == 429 and "Too many wrong passwords" in form.text and form.headers["retry-after"]
        real_user.get("/login")
        form = real_user.post("/login", data={"username": "clin.a", "password": "the-real-password",
                                              "csrf_token": real_user.cookies["mosaic_login_csrf"]})
        assert form.status_code == 303
    expected = {(ATTACKER, "denied"), (REAL_USER, "success"), (REAL_USER, "denied")}
    # the middleware records an answer's audit entry once the answer is sent: the client may see it first
    wait_until(lambda: expected <= {(record.address, record.outcome) for record in sign_in_records(node, "clin.a")},
               timeout=60, what="the sign-in audit records")
    addresses = {(record.address, record.outcome) for record in sign_in_records(node, "clin.a")}
    assert (ATTACKER, "success") not in addresses


def test_a_flood_of_failed_sign_ins_from_one_client_gets_429(node: Mosaic) -> None:
    """20 wrong passwords a minute from one address, spread over names so no single name is held back: the
    next sign-in from that address waits, whatever the name; other clients do not."""
    node.identity.add_user("clin.b", roles=["clinician"], password="clin-b-password")
    flooder = "127.0.0.3"
    with client_at(node, flooder) as flood, client_at(node, "127.0.0.4") as bystander:
        for attempt in range(20):
            answer = flood.get("/api/me", auth=(f"name-{attempt % 5}", "guess"))
            assert answer.status_code == 401, (attempt, answer.text)
        refused = flood.get("/api/me", auth=("clin.b", "clin-b-password"))
        assert refused.status_code == 429 and f"too many failed sign-ins from {flooder}" in refused.json()["error"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert bystander.get("/api/me", auth=("clin.b", "clin-b-password")).status_code == 200
    assert any(record.address == flooder and "too many failed sign-ins" in record.detail
               for record in sign_in_records(node, "clin.b"))


def test_password_checks_wait_for_a_free_slot_and_are_refused_when_none_frees(node: Mosaic) -> None:
    """One argon2id check at a time on this node: while it is taken, a sign-in gets 503 with Retry-After rather
    than a place in an unbounded queue; once it is free, the same sign-in works."""
    node.identity.add_user("clin.c", roles=["clinician"], password="clin-c-password")
    with client_at(node, "127.0.0.5") as client:
        with node.identity._gate.slot():  # a check in progress
            busy = client.get("/api/me", auth=("clin.c", "clin-c-password"))
        assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        assert client.get("/api/me", auth=("clin.c", "clin-c-password")).status_code == 200


def test_dimse_user_identity_is_held_back_per_client_too(node: Mosaic) -> None:
    """User identity negotiation (user name and passcode) goes through the same checks as HTTP."""
    node.identity.add_user("clin.d", roles=["clinician"], password="clin-d-password")
    for attempt in range(5):
        assert not associate(node, ATTACKER, ("clin.d", f"guess-{attempt}"))
    assert not associate(node, ATTACKER, ("clin.d", "clin-d-password"))  # held back, even the right one
    assert associate(node, REAL_USER, ("clin.d", "clin-d-password"))
    denied = [json.loads(record.detail)["reason"] for record in sign_in_records(node, "clin.d")
              if record.outcome == "denied"]
    assert any("too many wrong passwords for 'clin.d' from 127.0.0.1" in reason for reason in denied)


def associate(node: Mosaic, address: str, user: tuple[str, str]) -> bool:
    """Whether an association from ``address`` signed in as ``user`` (name, passcode) is accepted."""
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import UserIdentityNegotiation
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(Verification)
    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field, item.secondary_field = user[0].encode(), user[1].encode()
    association = ae.associate(LOCALHOST, node.dicom_port, ae_title=MOSAIC_AE, ext_neg=[item],
                               bind_address=(address, 0))
    accepted = bool(association.is_established)
    if accepted:
        association.release()
    ae.shutdown()
    return accepted


def test_waits_grow_per_pair_and_end() -> None:
    """After 5 wrong passwords in a row: 1 s, 2 s, 4 s… at most 15 minutes, for that name and address only;
    a quiet spell or a right password starts afresh (a clock the test moves, not the wall clock)."""
    now = [1000.0]
    throttle = _SignInThrottle(1.0, 900.0, 1000, clock=lambda: now[0])
    waits: list[float] = []
    for _failure in range(16):
        now[0] += waits[-1] if waits else 0  # tries again the moment it may
        throttle.check("admin", ATTACKER)
        throttle.failed("admin", ATTACKER)
        waits.append(throttle._pairs[("admin", ATTACKER)][1] - now[0])
    assert waits == [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
    now[0] += 899
    with pytest.raises(SignInRefused, match="try again in 1 s") as refused:
        throttle.check("admin", ATTACKER)
    assert refused.value.retry_after == 1 and refused.value.status == 429
    throttle.check("admin", REAL_USER)  # another address: not held back
    throttle.check("someone-else", ATTACKER)
    now[0] += 900 + 900  # the wait, then a quiet quarter of an hour
    throttle.failed("admin", ATTACKER)
    assert throttle._pairs[("admin", ATTACKER)][0] == 1
    throttle.succeeded("admin", ATTACKER)
    assert ("admin", ATTACKER) not in throttle._pairs


@pytest.mark.parametrize(("peer", "headers", "audited"), [
    (ATTACKER, {"X-Forwarded-For": "10.9.9.9"}, ATTACKER),  # uvicorn would believe 127.0.0.1 by default
    (ATTACKER, {"Forwarded": "for=10.9.9.9"}, ATTACKER),
    (PROXY, {"X-Forwarded-For": "10.9.9.9"}, "10.9.9.9"),
    (PROXY, {"X-Forwarded-For": "6.6.6.6, 10.9.9.9, 10.1.2.3"}, "10.9.9.9"),  # right-most that is no proxy
    (PROXY, {"Forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
    (PROXY, {}, PROXY),
])
def test_the_audited_address_is_the_sockets_unless_a_trusted_proxy_forwards(
        node: Mosaic, peer: str, headers: dict[str, str], audited: str) -> None:
    token = node.identity.issue_token("admin", name="proxy test")
    before = node.audit.search(action="query", user="admin", limit=1)[1]

    def recorded() -> bool:  # the record is written once the answer has gone out: wait for it
        node.audit.flush()
        return node.audit.search(action="query", user="admin", limit=1)[1] > before

    with client_at(node, peer) as client:
        assert client.get("/dicom-web/studies", headers={**headers, "Authorization": f"Bearer {token}"}
                          ).status_code == 200
    wait_until(recorded, timeout=30)
    latest = node.audit.search(action="query", user="admin", limit=1)[0][0]
    assert latest.address == audited
