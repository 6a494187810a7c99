"""TorchServe workflows on the quickstart server: ``.war`` archives built by the real
torch-workflow-archiver, in the shape of TorchServe's examples/Workflows/nmt_transformers_pipeline
(a sequential "retranslation" and a parallel "dual translation" with function nodes), with model
archives built by torch-model-archiver. The "translations" are tiny TorchServe handler files
(upper case for German, reversed for French), so nothing downloads and no weights are needed.
The last test restarts a small server of its own (ingress and management only): a registered
workflow must come back with its models.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import TOKEN, read_access_log
from tests.e2e.serve_cluster import ServeCluster, load_config, serve_run
from tests.fixtures import torchserve_archives as ts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# TorchServe handler files of the three "translation" models: each answers one dict per request,
# as the NMT example's models do; an empty text is the handler's own 400.
TRANSLATOR = textwrap.dedent(
    """
    from ts.utils.util import PredictionException


    class Translator:
        def initialize(self, context):
            self.initialized = True

        def handle(self, data, context):
            answers = []
            for row in data:
                text = row.get("data") or row.get("body") or b""
                text = text.decode() if isinstance(text, (bytes, bytearray)) else str(text)
                if not text.strip():
                    raise PredictionException("cannot translate an empty text", 400)
                answers.append({"input": text, "%(key)s": %(expression)s})
            return answers
    """
)
MODELS = {
    "en2de": ("german_output", "text.upper()"),
    "de2en": ("english_output", "text.lower()"),
    "en2fr": ("french_output", "text[::-1]"),
}

# The workflows' own function nodes, written the way TorchServe's NMT example writes them.
RETRANSLATION_HANDLER = textwrap.dedent(
    """
    import json


    def prep_intermediate_input(data, context):
        if data is None:  # TorchServe calls each function once without data when it starts
            return None
        answer = json.loads(data[0].get("data") or data[0].get("body"))
        return [answer["german_output"]]


    def post_processing(data, context):
        if data is None:  # TorchServe calls each function once without data when it starts
            return None
        answer = json.loads(data[0].get("data") or data[0].get("body"))
        return [{"german_translation": answer["input"], "english_re_translation": answer["english_output"]}]
    """
)
RETRANSLATION_SPEC = textwrap.dedent(
    """
    models:
        min-workers: 1
        max-workers: 1
        batch-size: 4
        max-batch-delay: 100
        retry-attempts: 1
        timeout-ms: 30000

        nmt_en_de:
          url: en2de.mar

        nmt_de_en:
          url: de2en.mar

    dag:
      nmt_en_de: [prep_intermediate_input]
      prep_intermediate_input: [nmt_de_en]
      nmt_de_en: [post_processing]
    """
)
DUAL_HANDLER = textwrap.dedent(
    """
    import json


    def pre_processing(data, context):
        if data is None:  # TorchServe calls each function once without data when it starts
            return None
        return [data[0].get("data") or data[0].get("body")]


    def aggregate_func(data, context):
        if data is None:  # TorchServe calls each function once without data when it starts
            return None
        german = json.loads(data[0]["nmt_en_de"])
        french = json.loads(data[0]["nmt_en_fr"])
        if german["input"] == "fail":
            raise ValueError("no aggregate for that")
        return [{
            "english_input": german["input"],
            "german_translation": german["german_output"],
            "french_translation": french["french_output"],
        }]
    """
)
DUAL_SPEC = textwrap.dedent(
    """
    models:
        min-workers: 1
        max-workers: 1
        batch-size: 4
        max-batch-delay: 100
        retry-attempts: 0
        timeout-ms: 30000

        nmt_en_de:
          url: en2de.mar

        nmt_en_fr:
          url: en2fr.mar

    dag:
      pre_processing: [nmt_en_de, nmt_en_fr]
      nmt_en_de: [aggregate_func]
      nmt_en_fr: [aggregate_func]
    """
)

# TorchServe's examples/Workflows/dog_breed_classification shape: a model node with two parents
# (the function's output and the first model's) reads each by its parent's name.
JOINER = textwrap.dedent(
    """
    import json


    class Joiner:
        def initialize(self, context):
            self.initialized = True

        def handle(self, data, context):
            answers = []
            for row in data:
                original = row.get("pre_processing").decode()
                first = json.loads(row.get("classify").decode())
                answers.append(f"{original} -> {first['german_output']}")
            return answers
    """
)
BREED_HANDLER = textwrap.dedent(
    """
    def pre_processing(data, context):
        if data is None:  # TorchServe calls each function once without data when it starts
            return None
        return [bytes(data[0].get("data") or data[0].get("body")).decode().strip()]
    """
)
BREED_SPEC = textwrap.dedent(
    """
    models:
        min-workers: 1
        max-workers: 1
        batch-size: 4
        max-batch-delay: 100
        classify:
          url: en2de.mar
        breed:
          url: joiner.mar
    dag:
      pre_processing: [classify, breed]
      classify: [breed]
    """
)


def workflow_archiver() -> str:
    found = shutil.which("torch-workflow-archiver", path=str(Path(sys.executable).parent))
    return found or "torch-workflow-archiver"


def build_war(store: Path, work: Path, name: str, spec: str, handler: str) -> Path:
    """Run torch-workflow-archiver as TorchServe's example README does."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(spec)
    (work / f"{name}_handler.py").write_text(handler)
    command = [workflow_archiver(), "--workflow-name", name, "--spec-file", "spec.yaml"]
    command += ["--handler", f"{name}_handler.py", "--export-path", str(store), "-f"]
    subprocess.run(command, cwd=work, check=True, capture_output=True)
    return store / f"{name}.war"


@pytest.fixture(scope="module")
def store(quickstart: ServeCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = quickstart.root / "store"  # type: ignore[attr-defined]
    work = tmp_path_factory.mktemp("workflows")
    for name, (key, expression) in MODELS.items():
        source = TRANSLATOR % {"key": key, "expression": expression}
        ts.build_handler_only(store, work / name, name, "1.0", source, "translator.py")
    build_war(store, work / "retranslate", "retranslate", RETRANSLATION_SPEC, RETRANSLATION_HANDLER)
    build_war(store, work / "dual", "dual", DUAL_SPEC, DUAL_HANDLER)
    ts.build_handler_only(store, work / "joiner", "joiner", "1.0", JOINER, "joiner.py")
    build_war(store, work / "breed", "breed", BREED_SPEC, BREED_HANDLER)
    return store


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from the Prometheus text of /metrics."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def expect(response: httpx.Response, status: int) -> httpx.Response:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response


def test_sequential_and_parallel_workflows_from_war_archives(quickstart: ServeCluster, store: Path) -> None:
    with quickstart.client(timeout=300) as client:
        # Management: register (the models as <workflow>__<node>), list, describe.
        answer = expect(client.post("/workflows?url=retranslate.war", headers=AUTH), 200).json()
        assert answer == {"status": "Workflow retranslate has been registered and scaled successfully."}
        expect(client.post("/workflows", params={"url": "dual.war"}, headers=AUTH), 200)
        assert expect(client.get("/workflows", headers=AUTH), 200).json() == {
            "workflows": [
                {"workflowName": "dual", "workflowUrl": "dual.war"},
                {"workflowName": "retranslate", "workflowUrl": "retranslate.war"},
            ]
        }
        (described,) = expect(client.get("/workflows/retranslate", headers=AUTH), 200).json()
        assert described["workflowName"] == "retranslate" and described["workflowUrl"] == "retranslate.war"
        assert (described["minWorkers"], described["maxWorkers"], described["batchSize"]) == (1, 1, 4)
        assert described["maxBatchDelay"] == 100 and described["status"] == "RUNNING"
        assert described["workflowDag"] == (
            "{nmt_en_de=[prep_intermediate_input], prep_intermediate_input=[nmt_de_en], "
            "nmt_de_en=[post_processing]}"
        )
        models = {m["modelName"] for m in expect(client.get("/models", headers=AUTH), 200).json()["models"]}
        assert {"retranslate__nmt_en_de", "retranslate__nmt_de_en", "dual__nmt_en_fr"} <= models
        # Each model node is a model like any other: its own describe and its own predictions.
        (node_model,) = expect(client.get("/models/dual__nmt_en_fr", headers=AUTH), 200).json()
        assert node_model["batchSize"] == 4 and node_model["maxBatchDelay"] == 100
        direct = expect(client.post("/predictions/dual__nmt_en_fr", content=b"abc"), 200).json()
        assert direct == {"input": "abc", "french_output": "cba"}

        # Inference: a sequential pipeline, then two concurrent branches joined by a function.
        reply = expect(client.post("/wfpredict/retranslate", content=b"Hello World"), 200)
        assert reply.json() == {"german_translation": "HELLO WORLD", "english_re_translation": "hello world"}
        assert reply.headers["content-type"] == "application/json" and reply.headers["x-request-id"]
        reply = expect(client.post("/wfpredict/dual", content=b"Good morning"), 200)
        assert reply.json() == {
            "english_input": "Good morning",
            "german_translation": "GOOD MORNING",
            "french_translation": "gninrom dooG",
        }

        # A failing node answers with its own status, named (TorchServe: 500 "Error executing ...").
        failed = expect(client.post("/wfpredict/retranslate", content=b"   "), 400).json()
        assert failed["node"] == "nmt_en_de" and failed["type"] == "PredictionException"
        assert failed["message"] == (
            'Workflow node "nmt_en_de" (model "retranslate__nmt_en_de") failed: '
            "cannot translate an empty text"
        )
        failed = expect(client.post("/wfpredict/dual", content=b"fail"), 500).json()
        assert failed["node"] == "aggregate_func"
        assert failed["message"] == 'Workflow node "aggregate_func" failed: ValueError: no aggregate for that'
        expect(client.post("/wfpredict/nowhere", content=b"x"), 404)
        expect(client.get("/wfpredict/dual"), 405)

        # Metrics and access-log lines per workflow and per node.
        samples = metric_samples(expect(client.get("/metrics"), 200).text)
        assert samples[("raytorch_workflow_requests_total", (("code", "200"), ("workflow", "dual")))] == 1
        assert (
            samples[("raytorch_workflow_requests_total", (("code", "400"), ("workflow", "retranslate")))] == 1
        )
        node = "raytorch_workflow_node_requests_total"
        assert samples[(node, (("code", "200"), ("node", "nmt_en_fr"), ("workflow", "dual")))] == 2
        assert samples[(node, (("code", "500"), ("node", "aggregate_func"), ("workflow", "dual")))] == 1
        assert samples[(node, (("code", "400"), ("node", "nmt_en_de"), ("workflow", "retranslate")))] == 1
        assert ("raytorch_workflow_requests_total", (("code", "404"), ("workflow", "nowhere"))) not in samples
        # A model node's requests are also its model's (protocol "workflow"), beside /predictions'.
        model = (("code", "200"), ("model_name", "dual__nmt_en_fr"), ("model_version", "1.0"))
        assert samples[("raytorch_requests_total", (*model, ("protocol", "workflow")))] == 2
        assert samples[("raytorch_requests_total", (*model, ("protocol", "torchserve")))] == 1
        request_id = reply.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and request_id not in read_access_log(quickstart):
            time.sleep(0.2)
        lines = [line for line in read_access_log(quickstart).splitlines() if request_id in line]
        nodes = sorted(
            line.split('"NODE /wfpredict/dual/')[1].split('"')[0] for line in lines if "NODE" in line
        )
        assert nodes == ["aggregate_func", "nmt_en_de", "nmt_en_fr", "pre_processing"], lines
        assert any('"POST /wfpredict/dual"' in line and "protocol=workflow" in line for line in lines)

        # Re-registering is a conflict; unregistering removes the workflow and its models.
        conflict = expect(client.post("/workflows?url=dual.war", headers=AUTH), 409).json()
        assert conflict["message"] == "Workflow dual is already registered."
        for name in ("retranslate", "dual"):
            answer = expect(client.delete(f"/workflows/{name}", headers=AUTH), 200).json()
            assert answer == {"status": f'Workflow "{name}" unregistered'}
        expect(client.get("/workflows/dual", headers=AUTH), 404)
        models = {m["modelName"] for m in expect(client.get("/models", headers=AUTH), 200).json()["models"]}
        assert not any("__" in name for name in models), models
        quickstart.wait_for(
            lambda: client.post("/wfpredict/dual", content=b"x").status_code == 404, 10, "the workflow gone"
        )


def test_bad_workflow_registrations_say_what_is_wrong(
    quickstart: ServeCluster, store: Path, tmp_path: Path
) -> None:
    broken = DUAL_SPEC.replace("nmt_en_fr: [aggregate_func]", "nmt_en_fr: [aggregate_func, pre_processing]")
    build_war(store, tmp_path / "cyclic", "cyclic", broken, DUAL_HANDLER)
    missing = DUAL_SPEC.replace("en2fr.mar", "nowhere.mar")
    build_war(store, tmp_path / "missing", "missing", missing, DUAL_HANDLER)
    with quickstart.client(timeout=300) as client:
        expect(client.post("/workflows", headers=AUTH), 400)
        assert (
            "cycle" in expect(client.post("/workflows?url=cyclic.war", headers=AUTH), 400).json()["message"]
        )
        assert expect(client.post("/workflows?url=absent.war", headers=AUTH), 404).json()["message"] == (
            "Workflow not found in workflow store: absent.war"
        )
        failed = expect(client.post("/workflows?url=missing.war", headers=AUTH), 404).json()
        assert failed["node"] == "nmt_en_fr" and "nowhere.mar" in failed["message"]
        # Nothing of the failed registration stays behind.
        models = {m["modelName"] for m in expect(client.get("/models", headers=AUTH), 200).json()["models"]}
        assert not any(name.startswith("missing__") for name in models), models
        expect(client.get("/workflows/missing", headers=AUTH), 404)
        expect(client.get("/workflows", headers={}), 401)


def test_a_model_node_with_two_parents_gets_each_by_name(quickstart: ServeCluster, store: Path) -> None:
    with quickstart.client(timeout=300) as client:
        expect(client.post("/workflows?url=breed.war", headers=AUTH), 200)
        try:
            reply = expect(client.post("/wfpredict/breed", content=b" Hallo "), 200)
            assert reply.text == "Hallo -> HALLO"  # a handler's text answer is sent as text
            assert reply.headers["content-type"].startswith("text/plain")
        finally:
            expect(client.delete("/workflows/breed", headers=AUTH), 200)


def test_registered_workflows_come_back_after_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("workflow-restart")
    store = root / "store"
    store.mkdir()
    for name in ("en2de", "en2fr"):
        key, expression = MODELS[name]
        source = TRANSLATOR % {"key": key, "expression": expression}
        ts.build_handler_only(store, root / "work" / name, name, "1.0", source, "translator.py")
    build_war(store, root / "work" / "dual", "dual", DUAL_SPEC, DUAL_HANDLER)
    config = load_config("quickstart.yaml")
    config["applications"] = [a for a in config["applications"] if a["name"] in ("ingress", "management")]
    env = {
        "RAYTORCH_STATE_DIR": str(root / "state"),
        "RAYTORCH_MODEL_STORE": str(store),
        "RAYTORCH_TOKEN": TOKEN,
    }
    expected = {"english_input": "Hi", "german_translation": "HI", "french_translation": "iH"}
    for first in (True, False):
        with serve_run(config, extra_env=env) as cluster, cluster.client(timeout=300) as client:
            cluster.wait_for(
                lambda: client.get("/workflows", headers=AUTH).status_code == 200, 180, "the management API"
            )
            if first:
                expect(client.post("/workflows?url=dual.war", headers=AUTH), 200)
            cluster.wait_for(
                lambda: client.post("/wfpredict/dual", content=b"Hi").status_code == 200, 240, "the workflow"
            )
            assert client.post("/wfpredict/dual", content=b"Hi").json() == expected
            listed = expect(client.get("/workflows", headers=AUTH), 200).json()
            assert listed == {"workflows": [{"workflowName": "dual", "workflowUrl": "dual.war"}]}
