"""Regenerate the committed Python stubs in proto/gen/python from proto/ (offline).

protoc comes from grpcio-tools, the typed stubs from mypy-protobuf; the vendored googleapis protos in
third_party/proto are on the include path but not generated (googleapis-common-protos provides them).
The output is deterministic, so `make proto-check` can fail CI on any drift.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "proto" / "gen" / "python"
GENERATED_ROOT = OUT / "cityos"


def generate(out: Path, proto_root: Path = PROTO) -> int:
    """Generate every proto under `proto_root`/cityos into `out` (its `cityos/` tree is replaced)."""
    sources = sorted(p.relative_to(proto_root).as_posix() for p in (proto_root / "cityos").rglob("*.proto"))
    if not sources:
        raise SystemExit("no .proto files under proto/cityos")
    generated_root = out / "cityos"
    shutil.rmtree(generated_root, ignore_errors=True)
    generated_root.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{ROOT / 'third_party' / 'proto'}",
        f"-I{wkt}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=proto_root)
    # Regular packages (not namespace packages), so `cityos.<area>.v1` imports the same everywhere.
    for directory in [generated_root, *sorted(p for p in generated_root.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text("")
    (generated_root / "py.typed").write_text("")
    return len(sources)


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def drift(committed: Path, fresh: Path) -> list[str]:
    """Files that differ between the committed tree and a fresh generation (added, removed, changed)."""
    old, new = _files(committed), _files(fresh)
    changed = [f for f in sorted(old & new) if not filecmp.cmp(committed / f, fresh / f, shallow=False)]
    return (
        [f"+ {f}" for f in sorted(new - old)]
        + [f"- {f}" for f in sorted(old - new)]
        + [f"~ {f}" for f in changed]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed stubs differ from a fresh run"
    )
    args = parser.parse_args()
    if not args.check:
        count = generate(OUT)
        print(f"generated {count} proto files into {OUT.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        differences = drift(GENERATED_ROOT, Path(scratch) / "cityos")
    if differences:
        print("generated stubs are out of date; run `make proto` and commit the result:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in differences), file=sys.stderr)
        return 1
    print("generated stubs match proto/ (no drift)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
