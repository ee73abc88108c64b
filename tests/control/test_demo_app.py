"""The sample app's gRPC service: the .proto that `meshgate demo-app proto` prints (for grpcurl and
protoc users) is the descriptor the app and `demo-app call` build in code."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from meshgate.control.demo_app import PROTO, _descriptor


def test_printed_proto_is_the_descriptor_the_app_serves(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "petstore.proto").write_text(PROTO)
    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={out}", "demo/petstore.proto"]) == 0
    (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    built = _descriptor()
    for proto in (compiled, built):
        for msg in proto.message_type:
            for field in msg.field:
                field.ClearField("json_name")  # protoc fills it in; the runtime derives the same
    assert compiled.message_type == built.message_type
    assert compiled.service == built.service
    assert (compiled.package, compiled.syntax) == (built.package, built.syntax)
