#!/usr/bin/env python3
"""A gRPC client nobody on this project wrote: Python grpcio, learning the API from the
broker's server reflection alone (no .proto file). Used by tests/it/foreign_client.rs.

usage: reflect_client.py ADDR SPC  -> prints one JSON object per call on stdout
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "certbroker.v1.CertificateBrokerService"


def main() -> None:
    addr, spc = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    if SERVICE not in db.get_services():
        sys.exit(f"{SERVICE} not offered by reflection: {db.get_services()}")
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindServiceByName(SERVICE).FindMethodByName("GetCertificate")
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{SERVICE}/GetCertificate",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    request = json_format.ParseDict({"tn_auth_list": [{"spc": spc}]}, req_cls())
    for _ in range(2):
        resp = call(request, timeout=60)
        print(json.dumps({
            "serial_hex": resp.serial_hex,
            "cache_status": resp.DESCRIPTOR.fields_by_name["cache_status"]
                .enum_type.values_by_number[resp.cache_status].name,
            "chain_pem": resp.certificate_chain_pem,
            "key_len": len(resp.private_key_pkcs8_der),
        }), flush=True)

    bad = json_format.ParseDict({"tn_auth_list": [{"spc": ""}]}, req_cls())
    try:
        call(bad, timeout=10)
        sys.exit("empty SPC was accepted")
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "details": e.details()}), flush=True)


if __name__ == "__main__":
    main()
