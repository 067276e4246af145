"""The Open Inference Protocol v2 over gRPC: a real ``kubeloop serve --grpc-port``
process, driven by the official Triton client (``tritonclient.grpc``) for conformance
and by the raw stub (Triton's superset of the published .proto) for client mistakes,
each of which must get its own status (never INTERNAL or UNKNOWN) and leave the server
answering the next good request."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from serving_helpers import Server, serving, start_server, wait_for

# Triton's messages: the server's own modules register the same protobuf package
# (``inference``) and one process can hold only one of them; on the wire they agree
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from kubeloop.contracts.artifacts import LABEL_OUTPUT, PROBA_OUTPUT

LISTENING = re.compile(r"gRPC \(Open Inference Protocol v2\) listening on 127\.0\.0\.1:(\d+)")
Code = grpc.StatusCode
MAX_BODY = 1024 * 1024


def grpc_address(server: Server) -> str:
    m = LISTENING.search(server.log)
    assert m, f"no gRPC port in the log:\n{server.log}"
    return f"127.0.0.1:{m.group(1)}"


@pytest.fixture(scope="module")
def cancer_grpc(cancer_model) -> Iterator[Server]:
    env = {"KUBELOOP_SERVING_MAX_BODY_BYTES": str(MAX_BODY)}
    with serving(cancer_model, "--name", "cancer", "--grpc-port", "0", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def mixed_grpc(mixed_model) -> Iterator[Server]:
    with serving(mixed_model, "--name", "mixed", "--grpc-port", "0") as server:
        yield server


@pytest.fixture(scope="module")
def client(cancer_grpc):
    c = triton.InferenceServerClient(grpc_address(cancer_grpc))
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(cancer_grpc) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_address(cancer_grpc)) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def feature_inputs(rows):
    inputs = []
    for name in rows.columns:
        inp = triton.InferInput(name, [len(rows), 1], "FP32")
        inp.set_data_from_numpy(rows[[name]].to_numpy(np.float32))
        inputs.append(inp)
    return inputs


# ------------------------------------------------------------------ conformance


def test_health_and_metadata_with_the_triton_client(client, cancer_rows):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata(as_json=True)["name"] == "kubeloop"
    meta = client.get_model_metadata("cancer", as_json=True)
    assert meta["name"] == "cancer"
    assert [i["name"] for i in meta["inputs"]] == list(cancer_rows.columns)
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32"}
    assert {o["name"] for o in meta["outputs"]} == {LABEL_OUTPUT, PROBA_OUTPUT}
    version = meta["versions"][0]
    assert client.is_model_ready("cancer")
    assert client.is_model_ready("cancer", version)
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as err:
        client.get_model_metadata("other")
    assert err.value.status() == str(Code.NOT_FOUND)
    with pytest.raises(InferenceServerException) as err:
        client.is_model_ready("cancer", "no-such-version")
    assert err.value.status() == str(Code.NOT_FOUND)


def test_infer_fp32_matches_rest(client, cancer_grpc, cancer_rows):
    rows = cancer_rows.iloc[:5]
    result = client.infer("cancer", feature_inputs(rows), request_id="req-1")
    labels, probs = result.as_numpy(LABEL_OUTPUT), result.as_numpy(PROBA_OUTPUT)
    assert probs.shape == (5, 2)
    assert labels.tolist() == probs.argmax(axis=1).tolist()
    assert result.get_response().id == "req-1"
    doc = {
        "inputs": [
            {"name": c, "datatype": "FP32", "shape": [5], "data": rows[c].tolist()}
            for c in rows.columns
        ]
    }
    with cancer_grpc.client() as http:
        rest = http.post("/v2/models/cancer/infer", json=doc).json()
    by_name = {o["name"]: o["data"] for o in rest["outputs"]}
    np.testing.assert_allclose(probs.ravel(), by_name[PROBA_OUTPUT], rtol=1e-6)
    # one output asked for: only that one comes back
    out = [triton.InferRequestedOutput(PROBA_OUTPUT)]
    only = client.infer("cancer", feature_inputs(rows), outputs=out).get_response()
    assert [o.name for o in only.outputs] == [PROBA_OUTPUT]


def test_infer_bytes_and_nullable_inputs(mixed_grpc):
    with triton.InferenceServerClient(grpc_address(mixed_grpc)) as c:
        age = triton.InferInput("age", [3], "FP32")
        age.set_data_from_numpy(np.array([30.0, 50.0, 41.5], np.float32))
        income = triton.InferInput("income", [3], "FP32")
        income.set_data_from_numpy(np.array([40.0, np.nan, 60.0], np.float32))
        city = triton.InferInput("city", [3], "BYTES")
        city.set_data_from_numpy(np.array([b"paris", b"rome", b"oslo"], dtype=object))
        result = c.infer("mixed", [age, income, city])
    labels = result.as_numpy(LABEL_OUTPUT)
    assert labels.shape == (3,)
    assert {v.decode() for v in labels.ravel()} <= {"yes", "no"}


def test_typed_contents_are_accepted(stub, cancer_rows):
    rows = cancer_rows.iloc[:2]
    req = pb.ModelInferRequest(model_name="cancer")
    for c in rows.columns:
        t = req.inputs.add(name=c, datatype="FP32", shape=[2])
        t.contents.fp32_contents.extend(rows[c].tolist())
    resp = stub.ModelInfer(req, timeout=10)
    assert [o.name for o in resp.outputs] == [LABEL_OUTPUT, PROBA_OUTPUT]
    assert len(resp.raw_output_contents) == 2


NUMPY = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64}


def raw_outputs(resp: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The answer's raw contents as arrays of their declared datatype and shape."""
    return {
        out.name: np.frombuffer(raw, NUMPY[out.datatype]).reshape(out.shape)
        for out, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


def test_raw_contents_round_trip_per_feature_and_as_one_matrix(stub, cancer_rows):
    rows = cancer_rows.iloc[:4]
    typed = pb.ModelInferRequest(model_name="cancer")
    for c in rows.columns:
        t = typed.inputs.add(name=c, datatype="FP32", shape=[len(rows)])
        t.contents.fp32_contents.extend(rows[c].tolist())
    matrix = pb.ModelInferRequest(model_name="cancer")
    matrix.inputs.add(name="input-0", datatype="FP32", shape=[len(rows), len(rows.columns)])
    matrix.raw_input_contents.append(rows.to_numpy(np.float32).tobytes())
    expected = raw_outputs(stub.ModelInfer(typed, timeout=10))
    assert expected[PROBA_OUTPUT].shape == (4, 2)
    for req in (raw_request(rows), matrix):
        got = raw_outputs(stub.ModelInfer(req, timeout=10))
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            np.testing.assert_array_equal(got[name], values)


def test_concurrent_grpc_requests_share_model_calls_and_each_gets_its_own_rows(
    cancer_grpc, cancer_rows
):
    """grpc.aio hands RPCs over one event-loop turn apart: they must still be batched
    (they linger for company), and each caller must get its own row's answer."""
    rows = cancer_rows.iloc[:32]
    with grpc.insecure_channel(grpc_address(cancer_grpc)) as channel:
        sync = pb_grpc.GRPCInferenceServiceStub(channel)
        alone = [raw_outputs(sync.ModelInfer(raw_request(rows.iloc[i : i + 1]), timeout=10))
                 for i in range(len(rows))]  # fmt: skip

    async def burst() -> list[pb.ModelInferResponse]:
        async with grpc.aio.insecure_channel(grpc_address(cancer_grpc)) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelInfer(raw_request(rows.iloc[i : i + 1]), timeout=10)
                     for i in range(len(rows))]  # fmt: skip
            return list(await asyncio.gather(*calls))

    def coalesced() -> bool:
        before = cancer_grpc.metric("kubeloop_batch_size_count") or 0.0
        answers = asyncio.run(burst())
        for got, own in zip(map(raw_outputs, answers), alone, strict=True):
            # a row computed within a batch may differ from its own call in the last bits
            np.testing.assert_allclose(got[PROBA_OUTPUT], own[PROBA_OUTPUT], atol=1e-6)
            np.testing.assert_array_equal(got[LABEL_OUTPUT], own[LABEL_OUTPUT])
        calls = (cancer_grpc.metric("kubeloop_batch_size_count") or 0.0) - before
        return calls <= len(rows) / 2

    # a burst starts lingering only when a probe finds company: a few bursts at most
    wait_for("gRPC requests sharing model calls", coalesced, timeout=30)


def test_grpc_requests_are_counted_with_their_protocol(client, cancer_grpc, cancer_rows):
    client.infer("cancer", feature_inputs(cancer_rows.iloc[:1]))
    assert cancer_grpc.metric(
        "kubeloop_requests_total", model="cancer", protocol="grpc", code="200"
    )
    with pytest.raises(InferenceServerException):
        client.infer("cancer", [triton.InferInput("nope", [1], "FP32").set_data_from_numpy(
            np.ones(1, np.float32))])  # fmt: skip
    assert cancer_grpc.metric(
        "kubeloop_requests_total", model="cancer", protocol="grpc", code="400"
    )


# -------------------------------------------------------------- client mistakes


def raw_request(rows, **overrides) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="cancer")
    for c in rows.columns:
        req.inputs.add(name=c, datatype="FP32", shape=[len(rows)])
        req.raw_input_contents.append(rows[c].to_numpy(np.float32).tobytes())
    for key, value in overrides.items():
        setattr(req, key, value)
    return req


def mistakes(rows):
    """(what, request, metadata, expected status, message fragment)"""
    one = rows.iloc[:1]
    shape = raw_request(one)
    shape.inputs[0].shape[:] = [1, 3]
    unknown = raw_request(one)
    unknown.inputs[0].name = "no_such_feature"
    dtype = raw_request(one)
    dtype.inputs[0].datatype = "BYTES"
    fp16 = raw_request(one)
    fp16.inputs[0].datatype = "FP16"
    short = raw_request(one)
    short.raw_input_contents[0] = b"\x00\x00"
    nan = raw_request(one)
    nan.raw_input_contents[0] = np.array([np.nan], np.float32).tobytes()
    count = raw_request(one)
    del count.raw_input_contents[-1]
    wrong_field = pb.ModelInferRequest(model_name="cancer")
    wrong_field.inputs.add(name=one.columns[0], datatype="FP32", shape=[1])
    wrong_field.inputs[0].contents.fp64_contents.append(1.0)
    mixed = raw_request(one)
    mixed.inputs[0].contents.fp32_contents.append(1.0)
    params = raw_request(one)
    for i in range(100):
        params.parameters[f"k{i}"].int64_param = i
    empty_param = raw_request(one)
    empty_param.parameters["x"].CopyFrom(pb.InferParameter())
    huge = raw_request(one)
    huge.raw_input_contents[0] = b"\x00" * (MAX_BODY + 1)
    inf = raw_request(one)
    inf.raw_input_contents[0] = np.array([np.inf], np.float32).tobytes()
    return [
        ("wrong shape", shape, (), Code.INVALID_ARGUMENT, "shape"),
        ("unknown input", unknown, (), Code.INVALID_ARGUMENT, "unknown input"),
        ("wrong datatype", dtype, (), Code.INVALID_ARGUMENT, "datatype BYTES"),
        ("unsupported datatype", fp16, (), Code.INVALID_ARGUMENT, "FP16"),
        ("short raw contents", short, (), Code.INVALID_ARGUMENT, "bytes"),
        ("NaN", nan, (), Code.INVALID_ARGUMENT, "NaN"),
        ("infinity", inf, (), Code.INVALID_ARGUMENT, ""),
        ("raw contents per input", count, (), Code.INVALID_ARGUMENT, "raw_input_contents"),
        ("values in another field", wrong_field, (), Code.INVALID_ARGUMENT, "fp64_contents"),
        ("raw and typed contents", mixed, (), Code.INVALID_ARGUMENT,
         "'contents' beside raw_input_contents"),
        ("oversized id", raw_request(one, id="x" * 300), (), Code.INVALID_ARGUMENT,
         "MAX_REQUEST_ID"),
        ("oversized id metadata", raw_request(one), (("x-request-id", "y" * 300),),
         Code.INVALID_ARGUMENT, "x-request-id"),
        ("too many parameters", params, (), Code.INVALID_ARGUMENT, "MAX_PARAMETER_KEYS"),
        ("parameter without value", empty_param, (), Code.INVALID_ARGUMENT, "no bool"),
        ("no inputs", pb.ModelInferRequest(model_name="cancer"), (), Code.INVALID_ARGUMENT,
         "inputs"),
        ("unknown model", raw_request(one, model_name="other"), (), Code.NOT_FOUND, "other"),
        ("unknown version", raw_request(one, model_version="v9"), (), Code.NOT_FOUND, "v9"),
        ("message too large", huge, (), Code.RESOURCE_EXHAUSTED, ""),
    ]  # fmt: skip


def test_every_client_mistake_gets_its_status_and_the_next_request_is_served(stub, cancer_rows):
    good = raw_request(cancer_rows.iloc[:2])
    for what, req, metadata, code, fragment in mistakes(cancer_rows):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, metadata=metadata, timeout=10)
        assert err.value.code() == code, f"{what}: {err.value.code()} {err.value.details()}"
        assert fragment in (err.value.details() or ""), f"{what}: {err.value.details()}"
        resp = stub.ModelInfer(good, timeout=10)
        assert len(resp.raw_output_contents) == 2, what


def test_nan_in_a_required_input_and_bad_bytes_over_grpc(mixed_grpc):
    with grpc.insecure_channel(grpc_address(mixed_grpc)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def request(age: float, city: bytes) -> pb.ModelInferRequest:
            req = pb.ModelInferRequest(model_name="mixed")
            req.inputs.add(name="age", datatype="FP32", shape=[1]).contents.fp32_contents.append(
                age
            )
            req.inputs.add(name="income", datatype="FP32", shape=[1]).contents.fp32_contents.append(
                float("nan")
            )
            req.inputs.add(name="city", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                city
            )
            return req  # fmt: skip

        for bad, fragment in [(request(float("nan"), b"rome"), "age"),
                              (request(30.0, b"\xff\xfe"), "UTF-8")]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(bad, timeout=10)
            assert err.value.code() == Code.INVALID_ARGUMENT, err.value.details()
            assert fragment in (err.value.details() or "")
            assert stub.ModelInfer(request(30.0, b"rome"), timeout=10).outputs


# ------------------------------------------------------- limits and lifecycle


def test_the_in_flight_limit_is_shared_with_rest(cancer_model, cancer_rows):
    env = {"KUBELOOP_SERVING_MAX_IN_FLIGHT": "1"}
    with serving(cancer_model, "--name", "cancer", "--grpc-port", "0", env=env) as server:
        host, port = server.url.removeprefix("http://").split(":")
        # a REST request whose body never ends holds the one slot
        with socket.create_connection((host, int(port))) as held:
            held.sendall(
                b"POST /v2/models/cancer/infer HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{"
            )
            wait_for("the held request", lambda: server.metric("kubeloop_requests_in_flight") == 1)
            with grpc.insecure_channel(grpc_address(server)) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(raw_request(cancer_rows.iloc[:1]), timeout=10)
                assert err.value.code() == Code.RESOURCE_EXHAUSTED
                assert "MAX_IN_FLIGHT" in (err.value.details() or "")
                held.close()
                wait_for("the slot", lambda: server.metric("kubeloop_requests_in_flight") == 0)
                assert stub.ModelInfer(raw_request(cancer_rows.iloc[:1]), timeout=10).outputs


def test_sigterm_drains_grpc_too(cancer_model, cancer_rows):
    env = {"KUBELOOP_SERVING_DRAIN_SECONDS": "2", "KUBELOOP_SERVING_SHUTDOWN_TIMEOUT": "4"}
    server = start_server(cancer_model, "--name", "cancer", "--grpc-port", "0", env=env)
    try:
        with grpc.insecure_channel(grpc_address(server)) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            server.proc.send_signal(signal.SIGTERM)
            wait_for(
                "gRPC readiness to drop",
                lambda: not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready,
            )
            assert stub.ModelInfer(raw_request(cancer_rows.iloc[:1]), timeout=10).outputs
        assert server.proc.wait(2 + 4) == 0
    finally:
        server.stop(signal.SIGKILL)


def test_a_share_of_grpc_inference_goes_to_the_canary(
    cancer_model, other_cancer_model, cancer_rows
):
    with serving(other_cancer_model, "--name", "cancer") as canary, serving(
        cancer_model, "--name", "cancer", "--grpc-port", "0",
        "--canary-url", canary.url, "--canary-weight", "100",
    ) as stable:  # fmt: skip
        with triton.InferenceServerClient(grpc_address(stable)) as c:
            stable_version = c.get_model_metadata("cancer", as_json=True)["versions"][0]
            result = c.infer("cancer", feature_inputs(cancer_rows.iloc[:3]), request_id="r-7")
            # a version named is the stable one's: never forwarded
            pinned = c.infer("cancer", feature_inputs(cancer_rows.iloc[:1]),
                             model_version=stable_version)  # fmt: skip
        resp = result.get_response()
        assert resp.model_version != stable_version
        assert resp.id == "r-7"
        assert result.as_numpy(PROBA_OUTPUT).shape == (3, 2)
        assert pinned.get_response().model_version == stable_version
        assert (
            stable.metric("kubeloop_requests_total", protocol="grpc", variant="canary", code="200")
            == 1
        )
