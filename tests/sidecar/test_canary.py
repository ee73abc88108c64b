"""Canary choice: share, determinism, stickiness by header and cookie."""

import uuid

from meshgate.sidecar.canary import CanaryChooser, bucket, cookie_value


def test_bucket_is_stable_and_in_range() -> None:
    assert bucket("abc") == bucket("abc")
    assert all(0 <= bucket(str(i)) < 10000 for i in range(200))


def test_share_is_about_the_percent() -> None:
    chooser = CanaryChooser(threshold=2000)
    hits = sum(chooser.is_canary({}, str(uuid.uuid4())) for _ in range(2000))
    assert 300 <= hits <= 500


def test_zero_and_full() -> None:
    assert not CanaryChooser(threshold=0).is_canary({}, "x")
    assert CanaryChooser(threshold=10000).is_canary({}, "x")


def test_sticky_header_same_side_always() -> None:
    chooser = CanaryChooser(threshold=5000, sticky_header="x-user")
    for user in ("alice", "bob", "carol"):
        sides = {chooser.is_canary({"x-user": user}, str(uuid.uuid4())) for _ in range(50)}
        assert len(sides) == 1


def test_sticky_cookie_same_side_always() -> None:
    chooser = CanaryChooser(threshold=5000, sticky_cookie="session")
    for sid in ("s1", "s2", "s3"):
        hdrs = {"cookie": f"a=1; session={sid}; b=2"}
        assert len({chooser.is_canary(hdrs, str(uuid.uuid4())) for _ in range(50)}) == 1
    assert cookie_value("a=1; session=xyz", "session") == "xyz"
    assert cookie_value("a=1", "session") is None
