"""The three images (`make images`), run the way the chart and the operator run them.

Each image runs as uid 10001 with a read-only root filesystem and only /tmp writable
(the chart's and the operator's securityContext and emptyDir), without a network. The
build itself is not part of the test run (minutes of CPU): `make test` builds the images
first (`make images`), and these tests fail, saying so, when Docker or an image is
missing.
"""

from __future__ import annotations

import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest

from kubeloop.cli import INSTALLS
from needs import DOCKER, missing, tool

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {c: f"kubeloop-{c}:{VERSION}" for c in ("operator", "trainer", "serving")}
SITE = "/opt/kubeloop/lib/python3.11/site-packages"
#: What every image carries of the kubeloop namespace package: the core's own folder.
CORE = {p.name for p in (ROOT / "core" / "kubeloop").iterdir() if p.name != "__pycache__"}


@cache
def _docker() -> str:
    docker = tool("docker", how=DOCKER)
    ping = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60, check=False)
    if ping.returncode != 0:
        missing("no Docker daemon answers", DOCKER)
    return docker


def image(component: str) -> str:
    docker = _docker()
    ref = IMAGES[component]
    found = subprocess.run(
        [docker, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=False
    )
    if found.returncode != 0:
        missing(f"image {ref} is not built", DOCKER)
    return ref


def run(ref: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """``docker run`` as the cluster would: uid 10001, read-only root, /tmp a tmpfs, no network."""
    argv = [
        _docker(),
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--tmpfs=/tmp",
        "--user=10001:10001",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]
    if entrypoint is not None:
        argv.append(f"--entrypoint={entrypoint}")
    return subprocess.run(
        [*argv, ref, *args], capture_output=True, text=True, timeout=180, check=False
    )


def listing(ref: str, folder: str) -> set[str]:
    """The names in ``folder`` of the image."""
    out = run(ref, "-c", f"ls {folder}", entrypoint="sh")
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def site_packages(ref: str) -> set[str]:
    return {name.lower() for name in listing(ref, SITE)}


# Each image's own commands: `--help` imports the command's module, so a missing
# dependency of the image's extra fails here.
COMMANDS = {
    "operator": [("--help",), ("operator", "--help"), ("rules", "--help"), ("version",)],
    "trainer": [
        ("--help",),
        ("snapshot", "--help"),
        ("train", "--help"),
        ("register", "--help"),
        ("inspect", "--help"),
    ],
    "serving": [("--help",), ("serve", "--help")],
}


def _cases() -> list[object]:
    cases: list[object] = []
    for component, commands in COMMANDS.items():
        for args in commands:
            ident = f"{component}-{'-'.join(args).strip('-')}"
            cases.append(pytest.param(component, args, id=ident))
    return cases


@pytest.mark.parametrize(("component", "args"), _cases())
def test_image_command_runs_read_only_as_non_root(component, args):
    out = run(image(component), *args)
    assert out.returncode == 0, f"{IMAGES[component]} {' '.join(args)}:\n{out.stderr}"
    if args == ("version",):
        assert out.stdout.strip() == VERSION
    else:
        assert "Usage:" in out.stdout


@pytest.mark.parametrize("component", list(IMAGES))
def test_image_runs_as_uid_10001(component):
    ref = image(component)
    inspect = subprocess.run(
        [_docker(), "image", "inspect", "-f", "{{.Config.User}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert inspect.stdout.strip() == "10001:10001"


#: The gradient-boosting libraries: the trainer's alone.
BOOSTED = {"xgboost", "xgboost_cpu", "lightgbm", "onnxmltools"}
#: The object-store drivers (the cloud extra): in every image.
CLOUD = {"s3fs", "gcsfs", "adlfs"}
# Each image carries its own stack and none of the others' (by distribution name prefix).
CONTENTS = {
    "serving": (
        {"onnxruntime", "fastapi", *CLOUD},
        {"sklearn", "scikit_learn", "kopf", "skl2onnx", "pandas", "kubernetes", *BOOSTED},
    ),
    "operator": (
        {"kopf", "kubernetes", *CLOUD},
        {"sklearn", "scikit_learn", "onnxruntime", "pandas", "pyarrow", "fastapi", *BOOSTED},
    ),
    # xgboost-cpu, not the xgboost wheel that pulls NVIDIA's CUDA libraries in.
    "trainer": (
        {"sklearn", "skl2onnx", "xgboost", "lightgbm", "onnxmltools", *CLOUD},
        {"kopf", "fastapi", "uvicorn", "nvidia_nccl_cu12", "nvidia"},
    ),
}


@pytest.mark.parametrize("component", list(CONTENTS))
def test_image_carries_its_own_stack_only(component):
    packages = site_packages(image(component))
    required, forbidden = CONTENTS[component]
    assert required <= packages, f"{component} image lacks {sorted(required - packages)}"
    leaked = {p for p in packages if p.split("-")[0] in forbidden}
    assert not leaked, f"the {component} image carries {sorted(leaked)}"


def test_trainer_image_fits_xgboost_and_lightgbm():
    """Their native libraries load (LightGBM needs the base's libgomp1) and the trainer's
    param check fits each on its tiny sample, read-only as uid 10001."""
    code = (
        "from kubeloop.trainer import model\n"
        "for name in ('XGBClassifier', 'LGBMClassifier', 'XGBRegressor', 'LGBMRegressor'):\n"
        "    task = 'classification' if 'Classifier' in name else 'regression'\n"
        "    model.make_estimator(task, name, {}, 0)\n"
        "print('ok')"
    )
    out = run(image("trainer"), "-c", code, entrypoint="python")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_operator_image_imports_the_whole_operator():
    """Every handler module and the receiver load without the trainer's heavy stack."""
    out = run(
        image("operator"),
        "-c",
        "import kubeloop.operator.app, kubeloop.operator.alerts.receiver; print('ok')",
        entrypoint="python",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("component", list(IMAGES))
def test_image_carries_the_core_and_its_own_component_only(component):
    """No other component and no devcluster tooling in the image's kubeloop package."""
    assert {"api", "cli.py", "contracts", "driftreport.py", "inference.py", "progress.py"} == CORE
    found = listing(image(component), f"{SITE}/kubeloop") - {"__pycache__"}
    assert found == CORE | {component}, f"the {component} image's kubeloop/ holds {sorted(found)}"


@pytest.mark.parametrize("component", list(IMAGES))
def test_cluster_command_says_which_install_it_needs(component):
    out = run(image(component), "cluster", "--help")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "'kubeloop cluster' is not in this install" in out.stderr, out.stderr
    assert INSTALLS["cluster"] in out.stderr, out.stderr
