"""etcd with TLS and client certificates (issue 13, part 6): a real etcd (LocalEtcd in TLS mode,
`--client-cert-auth`) that control reaches with its client certificate, and nobody reaches without
one: not a plaintext client, not TLS without a certificate, not a certificate from another CA; and
`meshgate control` says so in one line instead of a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aetcd
import grpc
import pytest
from aetcd import rpc
from e2e.harness import Proc, meshgate, wait_port
from meshgate.control.ca import generate_ca
from meshgate.control.etcd_client import EtcdTLS
from meshgate.control.etcd_local import LocalEtcd, free_port, write_cert
from meshgate.control.server import start_control
from meshgate.control.store import Store
from meshgate.v1 import control_pb2, control_pb2_grpc
from tls import LocalControl, admin_channel

from .conftest import PETS, docs
from .test_poison import apply_rpc


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[LocalEtcd]:
    with LocalEtcd(tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def intruder(tmp_path_factory: pytest.TempPathFactory, tls_etcd: LocalEtcd) -> EtcdTLS:
    """A client certificate from another CA, presented with the right server CA."""
    directory = tmp_path_factory.mktemp("intruder")
    cert, key = write_cert(directory, "intruder", generate_ca("not-etcds-ca"))
    assert tls_etcd.client_tls is not None
    return EtcdTLS(ca=tls_etcd.client_tls.ca, cert=cert, key=key)


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory, tls_etcd: LocalEtcd) -> EtcdTLS:
    """etcd's real client certificate, but trusting another CA for the server."""
    directory = tmp_path_factory.mktemp("wrong-ca")
    other = directory / "ca.crt"
    other.write_bytes(generate_ca("someone-elses-ca")[0])
    assert tls_etcd.client_tls is not None
    return EtcdTLS(ca=other, cert=tls_etcd.client_tls.cert, key=tls_etcd.client_tls.key)


def prefix() -> str:
    return f"/tls-{uuid.uuid4().hex[:8]}/"


async def test_control_works_over_tls_with_its_client_certificate(tls_etcd: LocalEtcd) -> None:
    ctl = await start_control(tls_etcd.endpoint, port=0, prefix=prefix(), etcd_tls=tls_etcd.client_tls)
    try:
        async with admin_channel(ctl) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            applied = await stub.Apply(control_pb2.ApplyRequest(resources=docs(PETS)))
            assert [r.action for r in applied.results] == ["created", "created"]
            got = await stub.Get(control_pb2.GetRequest(kind="Stage", namespace="default", name="prod"))
            assert [r.stage.spec.variables["backend"] for r in got.resources] == ["b:1"]
        assert ctl.mirror.state.revision > 0  # the watch runs over the TLS channel too
    finally:
        await ctl.stop(0)


async def test_a_plaintext_client_cannot_read_the_keys(tls_etcd: LocalEtcd) -> None:
    p = prefix()
    store = Store(tls_etcd.endpoint, p, tls=tls_etcd.client_tls)
    await store.open()
    try:
        await store.apply(docs(PETS))
        assert len(await store._range(p)) == 2
        client = aetcd.Client(host="127.0.0.1", port=tls_etcd.client_port, timeout=3)
        with pytest.raises(aetcd.ClientError):
            await client.get_prefix(p.encode())
        await client.close()
    finally:
        await store.close()


async def test_tls_without_a_client_certificate_is_refused(tls_etcd: LocalEtcd) -> None:
    assert tls_etcd.client_tls is not None
    creds = grpc.ssl_channel_credentials(tls_etcd.client_tls.ca.read_bytes())
    async with grpc.aio.secure_channel(tls_etcd.endpoint, creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"/", range_end=b"\0"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_certificate_from_another_ca_is_refused(
    tls_etcd: LocalEtcd, intruder: EtcdTLS
) -> None:
    store = Store(tls_etcd.endpoint, prefix(), tls=intruder)
    with pytest.raises(ConnectionError) as err:
        await store.open()
    await store.close()
    assert "\n" not in str(err.value) and tls_etcd.endpoint in str(err.value)


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_etcd: LocalEtcd, wrong_ca: EtcdTLS
) -> None:
    store = Store(tls_etcd.endpoint, prefix(), tls=wrong_ca)
    with pytest.raises(ConnectionError) as err:
        await store.open()
    await store.close()
    assert "\n" not in str(err.value) and "certificate" in str(err.value).lower()


def run_control(*args: str) -> subprocess.CompletedProcess[str]:
    """`meshgate control` that is expected to give up at start."""
    argv = meshgate("control", "--listen", f"127.0.0.1:{free_port()}", "--prefix", prefix(), *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def tls_flags(tls: EtcdTLS) -> list[str]:
    return ["--etcd-ca", str(tls.ca), "--etcd-cert", str(tls.cert), "--etcd-key", str(tls.key)]


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The process failed with one `error:` line and no traceback (log lines and grpc core's own
    stderr lines may come before it)."""
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and out.stderr.strip().endswith(errors[0]), out.stderr
    return errors[0]


def test_meshgate_control_refuses_a_foreign_client_certificate_in_one_line(
    tls_etcd: LocalEtcd, intruder: EtcdTLS
) -> None:
    line = one_line_error(run_control("--etcd", tls_etcd.endpoint, *tls_flags(intruder)))
    assert tls_etcd.endpoint in line


def test_meshgate_control_refuses_a_wrong_ca_in_one_line(tls_etcd: LocalEtcd, wrong_ca: EtcdTLS) -> None:
    line = one_line_error(run_control("--etcd", tls_etcd.endpoint, *tls_flags(wrong_ca)))
    assert "certificate" in line.lower()


def test_meshgate_control_without_a_client_certificate_gives_up_in_one_line(tls_etcd: LocalEtcd) -> None:
    line = one_line_error(run_control("--etcd", tls_etcd.endpoint))
    assert tls_etcd.endpoint in line


def test_the_tls_flags_come_together(tls_etcd: LocalEtcd, tmp_path: Path) -> None:
    assert tls_etcd.client_tls is not None
    line = one_line_error(run_control("--etcd", tls_etcd.endpoint, "--etcd-ca", str(tls_etcd.client_tls.ca)))
    assert "--etcd-cert" in line and "--etcd-key" in line
    missing = EtcdTLS(ca=tmp_path / "nope.crt", cert=tls_etcd.client_tls.cert, key=tls_etcd.client_tls.key)
    line = one_line_error(run_control("--etcd", tls_etcd.endpoint, *tls_flags(missing)))
    assert "nope.crt" in line


async def test_a_meshgate_control_process_serves_over_tls_etcd(tls_etcd: LocalEtcd, tmp_path: Path) -> None:
    assert tls_etcd.client_tls is not None
    port = free_port()
    args = ["--etcd", tls_etcd.endpoint, *tls_flags(tls_etcd.client_tls), "--listen", f"127.0.0.1:{port}"]
    proc = Proc(meshgate("control", *args, "--prefix", prefix()), tmp_path / "control.log").start()
    try:
        await asyncio.to_thread(wait_port, port, 20.0, proc.popen)
        response = await asyncio.to_thread(apply_rpc, LocalControl(port), PETS)
        assert [r.action for r in response.results] == ["created", "created"]
    finally:
        proc.stop()
