#!/usr/bin/env python3
"""Hostile input from a gRPC client nobody on this project wrote (Python grpcio, API learned
from server reflection): bytes that are not valid protobuf on every broker method, and
values far beyond any bound. Used by tests/it/foreign_client.rs.

usage: hostile_client.py ADDR  -> prints one JSON object per call on stdout
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "certbroker.v1.CertificateBrokerService"
# tn_auth_list[0].spc = FF FE (not UTF-8); a length-delimited field cut short.
NOT_UTF8 = bytes([0x0A, 0x04, 0x0A, 0x02, 0xFF, 0xFE])
TRUNCATED = bytes([0x0A, 0x05, 0x01])


def report(what, call):
    try:
        result = call()
        print(json.dumps({"what": what, "code": "OK", "result": str(result)[:100]}), flush=True)
    except grpc.RpcError as e:
        details = e.details() or ""
        print(json.dumps({"what": what, "code": e.code().name, "details_len": len(details),
                          "details": details[:200]}), flush=True)


def main() -> None:
    addr = sys.argv[1]
    channel = grpc.insecure_channel(addr)
    identity = lambda b: b  # noqa: E731
    for method in ["GetCertificate", "Revoke", "ListRenewals"]:
        raw = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=identity,
                                  response_deserializer=identity)
        for name, body in [("not_utf8", NOT_UTF8), ("truncated", TRUNCATED)]:
            if method == "ListRenewals" and name == "not_utf8":
                continue  # an empty message: every field is unknown and skipped
            report(f"{method}/{name}", lambda: raw(body, timeout=10))
    watch = channel.unary_stream(f"/{SERVICE}/WatchCertificate", request_serializer=identity,
                                 response_deserializer=identity)
    for name, body in [("not_utf8", NOT_UTF8), ("truncated", TRUNCATED)]:
        report(f"WatchCertificate/{name}", lambda: next(iter(watch(body, timeout=10))))

    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName(SERVICE)

    def typed(method_name):
        m = service.FindMethodByName(method_name)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        call = channel.unary_unary(f"/{SERVICE}/{method_name}",
                                   request_serializer=req_cls.SerializeToString,
                                   response_deserializer=resp_cls.FromString)
        return req_cls, call

    req_cls, revoke = typed("Revoke")
    long_serial = json_format.ParseDict({"serial_hex": "a" * 50_000}, req_cls())
    report("Revoke/long_serial", lambda: revoke(long_serial, timeout=10))
    req_cls, get = typed("GetCertificate")
    long_spc = json_format.ParseDict({"tn_auth_list": [{"spc": "1" * 60_000}]}, req_cls())
    report("GetCertificate/long_spc", lambda: get(long_spc, timeout=10))


if __name__ == "__main__":
    main()
