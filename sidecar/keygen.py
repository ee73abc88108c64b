"""The sidecar's key and certificate request, made in a short-lived process of its own.

`python -m meshgate.sidecar.keygen CN` writes a new P-256 private key (PKCS#8 PEM) and a CSR for it
(PEM) on stdout. The sidecar runs it for each certificate it asks control for, so that its own
process never loads cryptography (9 MiB of every sidecar's memory, docs/benchmarks.md); the key goes
from this process to the sidecar over a pipe and is never written to disk.
"""

from __future__ import annotations

import asyncio
import sys
import weakref

TIMEOUT_S = 30.0
AT_ONCE = 2  # children at a time per event loop (one sidecar needs one; a bench runs fifty clients)
_CSR_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"
_LIMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def make(common_name: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for a new key whose CSR names `common_name`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "sidecar")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def generate(common_name: str) -> tuple[bytes, bytes]:
    """`make` in a child process; OSError when it cannot run or says nothing usable."""
    loop = asyncio.get_running_loop()
    limit = _LIMITS.get(loop)
    if limit is None:
        limit = _LIMITS[loop] = asyncio.Semaphore(AT_ONCE)
    async with limit:
        return await _run(common_name)


async def _run(common_name: str) -> tuple[bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshgate.sidecar.keygen",
        common_name,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise OSError(f"making a key took longer than {TIMEOUT_S:g}s") from None
    key_pem, begin, csr = out.partition(_CSR_BEGIN)
    if proc.returncode != 0 or not begin or b"PRIVATE KEY" not in key_pem:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise OSError(f"making a key failed (exit {proc.returncode}): {last[0]}")
    return key_pem, begin + csr


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m meshgate.sidecar.keygen COMMON_NAME", file=sys.stderr)
        return 2
    key_pem, csr_pem = make(sys.argv[1])
    sys.stdout.buffer.write(key_pem + csr_pem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
