"""FND-8: the generated stubs match the protos (the drift gate CI runs), and `cityos dev` starts and
stops cleanly."""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from cityos_platform.launcher import health_status
from cityos_platform.registry import discover

ROOT = Path(__file__).resolve().parent.parent


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.req("FND-8")
def test_regenerating_the_stubs_changes_nothing(tmp_path):
    gen = _gen_module()
    gen.generate(tmp_path)
    assert gen.drift(ROOT / "proto" / "gen" / "python" / "cityos", tmp_path / "cityos") == []


@pytest.mark.req("FND-8")
def test_the_drift_gate_catches_an_api_change_without_regenerated_stubs(tmp_path):
    gen = _gen_module()
    protos = tmp_path / "proto"
    shutil.copytree(ROOT / "proto" / "cityos", protos / "cityos")
    source = protos / "cityos" / "testing" / "v1" / "conformance.proto"
    text = source.read_text()
    source.write_text(text.replace("  bytes padding = 4;\n", "  bytes padding = 4;\n  string added = 5;\n"))
    gen.generate(tmp_path / "out", proto_root=protos)
    assert "~ testing/v1/conformance_pb2.py" in gen.drift(
        ROOT / "proto" / "gen" / "python" / "cityos", tmp_path / "out" / "cityos"
    )


def test_make_proto_check_passes_on_this_tree():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.req("FND-8")
def test_cityos_dev_starts_every_registered_service_and_stops_cleanly_on_sigint(registered_conformance):
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos_platform.cli", "dev"],
        env={**registered_conformance, "COLUMNS": "200", "CITYOS_GRACE_S": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        address = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and address is None:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"conformance\s*│\s*(127\.0\.0\.1:\d+)", line)
            if match:
                address = match.group(1)
        assert address, "".join(lines)
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
        lines.append(output)
        assert process.returncode == 0, "".join(lines)
        assert "stopped cleanly" in output
        assert health_status(address, timeout=0.5) is None  # the service process is gone too
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cityos_dev_with_no_services_says_so_and_exits():
    if discover():
        pytest.skip("services are installed here; the launcher test above covers starting them")
    result = subprocess.run(
        [sys.executable, "-m", "cityos_platform.cli", "dev"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "none were started" in " ".join(result.stdout.split())
