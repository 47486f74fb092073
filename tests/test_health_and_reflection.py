"""Standard health checks and server reflection, so grpcurl and probes work unchanged."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rsgrpc.server.app import SERVICE_NAMES
from rsgrpc.v1 import session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving


@pytest.mark.parametrize("service", ["", *SERVICE_NAMES])
def test_health_answers_serving_overall_and_per_service(server, service):
    health = health_pb2_grpc.HealthStub(server[1])
    answer = health.Check(health_pb2.HealthCheckRequest(service=service))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_every_service(server):
    stub = reflection_pb2_grpc.ServerReflectionStub(server[1])
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(stub.ServerReflectionInfo(iter([request])))
    listed = {s.name for s in answer.list_services_response.service}
    assert set(SERVICE_NAMES) <= listed
    assert "grpc.health.v1.Health" in listed


def test_bearer_token_is_required_except_for_health(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with serving(make_config(tmp_path, auth_token_file=str(token_file))) as (_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        sessions = session_pb2_grpc.SessionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            sessions.ListSessions(session_pb2.ListSessionsRequest())
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            sessions.ListSessions(
                session_pb2.ListSessionsRequest(), metadata=[("authorization", "Bearer wrong")]
            )
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        listed = sessions.ListSessions(
            session_pb2.ListSessionsRequest(), metadata=[("authorization", "Bearer s3cret")]
        )
        assert list(listed.sessions) == []
