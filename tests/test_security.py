"""Identity and transport security against a real collector on loopback with real TLS.

Every refusal here is checked twice: the caller gets the right status, and
nothing from it is stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.identity import IdentityError, JoinBundle, TlsFiles, enroll
from collector.server import Collector, CollectorSettings
from collector.store import create_token, open_store, revoke
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe.pki import AgentIdentity, CollectorPki, identity_from_cert_pem, key_pem, make_csr, new_key

CAT = """
sites:
  lab:
    checks:
      web: {type: tcp, target: "127.0.0.1:9", interval: 10s, timeout: 1s}
  other:
    checks:
      web: {type: tcp, target: "127.0.0.1:9", interval: 10s, timeout: 1s}
"""


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = CollectorPki(tmp / "tls")
        self.pki.init(["localhost", "127.0.0.1"])
        (tmp / "cat.yaml").write_text(CAT)
        self.db = tmp / "s.db"
        self.collector: Collector | None = None

    async def start(self) -> Collector:
        self.collector = Collector(
            CollectorSettings(
                self.tmp / "cat.yaml",
                self.db,
                "127.0.0.1:0",
                grace_s=1,
                tls_dir=self.tmp / "tls",
                enroll_listen="127.0.0.1:0",
                revocation_poll_s=0.2,
            )
        )
        await self.collector.start()
        return self.collector

    async def stop(self) -> None:
        if self.collector is not None:
            await self.collector.stop()
            self.collector = None

    @property
    def address(self) -> str:
        assert self.collector is not None
        return f"127.0.0.1:{self.collector.port}"

    def token(self, site: str = "lab", name: str | None = None, ttl_s: float = 3600) -> str:
        db = open_store(self.db)
        try:
            token = f"tok-{time.time_ns()}"
            create_token(db, token, site, name, int(ttl_s * 1e9), "test", time.time_ns())
            return token
        finally:
            db.conn.close()

    def bundle(self, token: str, site: str = "lab") -> JoinBundle:
        assert self.collector is not None
        return JoinBundle(
            self.address, f"127.0.0.1:{self.collector.enroll_port}", site, token, self.pki.ca_cert_pem()
        )

    def creds_for(self, site: str, name: str, **issue: object) -> grpc.ChannelCredentials:
        key = new_key()
        cert = self.pki.issue_agent_cert(make_csr(key), AgentIdentity(site, name), **issue)  # type: ignore[arg-type]
        return grpc.ssl_channel_credentials(self.pki.ca_cert_pem(), key_pem(key), cert)

    def count(self, table: str) -> int:
        with sqlite3.connect(self.db) as c:
            return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path)
    await lab.start()
    yield lab
    await lab.stop()


def register_req(name: str, site: str = "lab") -> pb.RegisterRequest:
    return pb.RegisterRequest(agent_id=name, site=site, version="t", epoch=1, agent_time_ns=time.time_ns())


def batch(agent: str, check: str = "lab/web") -> bytes:
    now = time.time_ns()
    r = pb.Result(
        check_id=check, check_revision="r", scheduled_ns=now, started_ns=now, duration_ns=1000, success=True
    )
    return pb.RecordBatch(
        agent_id=agent, epoch=1, first_seq=1, last_seq=1, records=[pb.Record(seq=1, result=r)]
    ).SerializeToString()


def push_call(ch: grpc.aio.Channel) -> grpc.aio.StreamStreamCall[bytes, pb.BatchAck]:
    method: grpc.aio.StreamStreamMultiCallable[bytes, pb.BatchAck] = ch.stream_stream(
        "/slaprobe.v1.Collector/PushRecords",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )
    return method()


async def push_one(ch: grpc.aio.Channel, data: bytes) -> pb.BatchAck:
    call = push_call(ch)
    await call.write(data)
    ack = await call.read()
    assert isinstance(ack, pb.BatchAck), ack
    return ack


async def register(
    address: str, creds: grpc.ChannelCredentials, name: str, site: str = "lab"
) -> pb.RegisterResponse:
    async with grpc.aio.secure_channel(address, creds) as ch:
        reply: pb.RegisterResponse = await pb_grpc.CollectorStub(ch).Register(
            register_req(name, site), timeout=5
        )
        return reply


async def test_enrolment_issues_a_certificate_naming_the_agent_and_its_site(lab: Lab) -> None:
    tls = TlsFiles(lab.tmp / "agent-tls")
    site, name = await enroll(lab.bundle(lab.token()), "paris-1", tls)
    assert (site, name) == ("lab", "paris-1")
    assert identity_from_cert_pem((tls.dir / "agent.crt").read_bytes()) == AgentIdentity("lab", "paris-1")
    assert (tls.dir / "agent.key").stat().st_mode & 0o777 == 0o600
    # The certificate works on the agent endpoint.
    reply = await register(lab.address, tls.credentials(), "paris-1")
    assert reply.collector_receive_ns > 0
    # Renewal gives a new certificate for the same identity.
    from agent.identity import renew

    old = (tls.dir / "agent.crt").read_bytes()
    async with grpc.aio.secure_channel(lab.address, tls.credentials()) as ch:
        await renew(ch, tls)
    new = (tls.dir / "agent.crt").read_bytes()
    assert new != old and identity_from_cert_pem(new) == AgentIdentity("lab", "paris-1")
    await register(lab.address, tls.credentials(), "paris-1")
    assert lab.count("certificates") == 2


async def test_used_and_expired_tokens_are_refused(lab: Lab) -> None:
    token = lab.token()
    await enroll(lab.bundle(token), "a1", TlsFiles(lab.tmp / "t1"))
    with pytest.raises(IdentityError, match="join token already used"):
        await enroll(lab.bundle(token), "a2", TlsFiles(lab.tmp / "t2"))
    expired = lab.token(ttl_s=0.001)
    await asyncio.sleep(0.01)
    with pytest.raises(IdentityError, match="join token expired"):
        await enroll(lab.bundle(expired), "a3", TlsFiles(lab.tmp / "t3"))
    with pytest.raises(IdentityError, match="unknown join token"):
        await enroll(lab.bundle("made-up"), "a4", TlsFiles(lab.tmp / "t4"))
    fixed = lab.token(name="only-this-name")
    with pytest.raises(IdentityError, match="this token is for agent 'only-this-name'"):
        await enroll(lab.bundle(fixed), "another", TlsFiles(lab.tmp / "t5"))
    assert not (lab.tmp / "t2" / "agent.crt").exists()
    assert lab.count("certificates") == 1


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired certificate"])
async def test_strangers_cannot_connect_and_store_nothing(lab: Lab, tmp_path: Path, case: str) -> None:
    if case == "no certificate":
        creds = grpc.ssl_channel_credentials(lab.pki.ca_cert_pem())
    elif case == "another CA":
        other = CollectorPki(tmp_path / "other")
        other.init(["localhost"])
        key = new_key()
        cert = other.issue_agent_cert(make_csr(key), AgentIdentity("lab", "a1"))
        creds = grpc.ssl_channel_credentials(lab.pki.ca_cert_pem(), key_pem(key), cert)
    else:
        creds = lab.creds_for("lab", "a1", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    async with grpc.aio.secure_channel(lab.address, creds) as ch:
        stub = pb_grpc.CollectorStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.Register(register_req("a1"), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails
        with pytest.raises(grpc.aio.AioRpcError):
            await push_one(ch, batch("a1"))
    assert lab.count("results") == 0 and lab.count("agents") == 0


async def test_one_agent_cannot_speak_for_another_or_for_another_site(lab: Lab) -> None:
    creds = lab.creds_for("lab", "a1")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await register(lab.address, creds, "b2")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "this certificate is for agent 'a1', not 'b2'" in (exc.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await register(lab.address, creds, "a1", site="other")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "enrolled for site 'lab', not 'other'" in (exc.value.details() or "")
    # Registered honestly as a1, it still cannot push a batch in b2's name.
    await register(lab.address, creds, "a1")
    async with grpc.aio.secure_channel(lab.address, creds) as ch:
        call = push_call(ch)
        await call.write(batch("b2"))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nor results for another site's check (rejected alone, the stream stays up).
    async with grpc.aio.secure_channel(lab.address, creds) as ch:
        call = push_call(ch)
        await call.write(batch("a1", check="other/web"))
        ack = await call.read()
        assert isinstance(ack, pb.BatchAck)
        assert [r.reason for r in ack.rejected] == ["unknown check 'other/web' for this agent's site"]
    assert lab.count("results") == 0


async def test_the_enrolment_port_serves_nothing_but_enrolment(lab: Lab) -> None:
    assert lab.collector is not None
    creds = grpc.ssl_channel_credentials(lab.pki.ca_cert_pem())
    async with grpc.aio.secure_channel(f"127.0.0.1:{lab.collector.enroll_port}", creds) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await pb_grpc.CollectorStub(ch).Register(register_req("a1"), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert lab.count("agents") == 0


async def test_revocation_closes_open_streams_and_survives_restart(lab: Lab) -> None:
    creds = lab.creds_for("lab", "a1")
    await register(lab.address, creds, "a1")
    async with grpc.aio.secure_channel(lab.address, creds) as ch:
        watch = pb_grpc.CollectorStub(ch).WatchChecks(pb.WatchChecksRequest(agent_id="a1"))
        first = await watch.read()
        assert isinstance(first, pb.CheckChanges) and first.snapshot
        db = open_store(lab.db)
        try:
            assert revoke(db, "a1", "test", "host decommissioned", time.time_ns())
        finally:
            db.conn.close()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(watch.read(), 5)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await register(lab.address, creds, "a1")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await lab.stop()
    await lab.start()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await register(lab.address, creds, "a1")
    assert "revoked" in (exc.value.details() or "")
    # A revoked name cannot be enrolled again either.
    with pytest.raises(IdentityError, match="revoked"):
        await enroll(lab.bundle(lab.token(name="a1")), "a1", TlsFiles(lab.tmp / "again"))


NASTY = [
    "paris'; DROP TABLE results;--",
    "../../etc/passwd",
    "\u202eevil\u202c rtl",
    'zürich "hq"',
    "tab\there\x01bell",
    "日本 🛰️",
]


async def test_names_with_sql_and_path_metacharacters_round_trip_byte_exact(tmp_path: Path) -> None:
    cat = {
        "sites": {
            s: {
                "checks": {
                    s + "/c": {"type": "tcp", "target": "127.0.0.1:9", "interval": "10s", "timeout": "1s"}
                }
            }
            for s in NASTY
        }
    }
    (tmp_path / "cat.yaml").write_text(json.dumps(cat, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    pki = CollectorPki(tmp_path / "tls")
    pki.init(["127.0.0.1"])
    c = Collector(
        CollectorSettings(
            tmp_path / "cat.yaml",
            tmp_path / "s.db",
            "127.0.0.1:0",
            grace_s=1,
            tls_dir=tmp_path / "tls",
            enroll_listen=None,
        )
    )
    await c.start()
    try:
        for site in NASTY:
            key = new_key()
            cert = pki.issue_agent_cert(make_csr(key), AgentIdentity(site, site))
            creds = grpc.ssl_channel_credentials(pki.ca_cert_pem(), key_pem(key), cert)
            await register(f"127.0.0.1:{c.port}", creds, site, site)
            async with grpc.aio.secure_channel(f"127.0.0.1:{c.port}", creds) as ch:
                assert c.hub is not None
                (spec,) = c.hub.catalogue.checks_for_site(site).values()
                call = push_call(ch)
                await call.write(batch(site, check=spec.id))
                ack = await call.read()
                assert isinstance(ack, pb.BatchAck) and ack.acked_seq == 1 and not ack.rejected
    finally:
        await c.stop()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert sorted(r[0] for r in db.execute("SELECT name FROM agents")) == sorted(NASTY)
        assert sorted(r[0] for r in db.execute("SELECT site FROM checks")) == sorted(NASTY)
        assert sorted(r[0] for r in db.execute("SELECT name FROM checks")) == sorted(s + "/c" for s in NASTY)
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == len(NASTY)
    assert not (tmp_path / "etc").exists()


@pytest.mark.slow
async def test_agent_renews_its_certificate_before_expiry_without_losing_results(tmp_path: Path) -> None:
    """A 30-second certificate: the agent renews at two thirds of its life and keeps delivering."""
    from agent.config import AgentConfig
    from agent.main import Agent

    lab = Lab(tmp_path)
    (tmp_path / "cat.yaml").write_text(
        CAT.replace("interval: 10s, timeout: 1s", "interval: 1s, timeout: 500ms")
    )
    lab.collector = Collector(
        CollectorSettings(
            tmp_path / "cat.yaml",
            lab.db,
            "127.0.0.1:0",
            grace_s=1,
            tls_dir=tmp_path / "tls",
            enroll_listen="127.0.0.1:0",
            cert_days=30 / 86400,
        )
    )
    await lab.collector.start()
    data = tmp_path / "agent"
    try:
        await enroll(lab.bundle(lab.token()), "renewer", TlsFiles(data / "tls"))
        first_cert = (data / "tls" / "agent.crt").read_bytes()
        agent = Agent(
            AgentConfig(collector=lab.address, site="lab", name="renewer", data_dir=data, heartbeat_s=2)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 45
        while lab.count("certificates") < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        assert lab.count("certificates") >= 2, "the agent did not renew its certificate"
        assert (data / "tls" / "agent.crt").read_bytes() != first_cert
        renewed_at = time.time_ns()
        while time.monotonic() < deadline:
            with sqlite3.connect(lab.db) as c:
                if c.execute(
                    "SELECT count(*) FROM results WHERE received_ns > ?", (renewed_at + 2 * 10**9,)
                ).fetchone()[0]:
                    break
            await asyncio.sleep(0.5)
        stop.set()
        await task
        epoch, produced = agent.outbox.epoch, agent.outbox.last_seq
        assert agent.outbox.depth == 0
    finally:
        await lab.stop()
    with sqlite3.connect(lab.db) as c:
        held = {
            s
            for (s,) in c.execute(
                "SELECT seq FROM results WHERE epoch = ? UNION ALL"
                " SELECT seq FROM clock_samples WHERE epoch = ? UNION ALL"
                " SELECT seq FROM record_log WHERE epoch = ? AND kind = 5",  # the agent's seals
                (epoch, epoch, epoch),
            )
        }
        after = c.execute("SELECT count(*) FROM results WHERE received_ns > ?", (renewed_at,)).fetchone()[0]
    assert held == set(range(1, produced + 1)), "a result was lost across the renewal"
    assert after > 0, "nothing was delivered with the renewed certificate"


async def test_join_files_are_never_silently_overwritten(lab: Lab) -> None:
    from click.testing import CliRunner

    from slaprobe.cli import main

    out = lab.tmp / "lab.join"
    args = [
        "agent",
        "token",
        "create",
        "--site",
        "lab",
        "--db",
        str(lab.db),
        "--tls-dir",
        str(lab.tmp / "tls"),
        "-o",
        str(out),
    ]
    runner = CliRunner()
    first = await asyncio.to_thread(runner.invoke, main, args)
    assert first.exit_code == 0, first.output
    content = out.read_bytes()
    again = await asyncio.to_thread(runner.invoke, main, args)
    assert again.exit_code == 1 and "exists; pass --force to overwrite it" in again.output
    assert out.read_bytes() == content
    assert lab.count("join_tokens") == 1  # the refused run created no live token
    forced = await asyncio.to_thread(runner.invoke, main, [*args, "--force"])
    assert forced.exit_code == 0 and out.read_bytes() != content
    assert out.stat().st_mode & 0o777 == 0o600
