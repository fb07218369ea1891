"""Copy the googleapis protos our API imports from the installed googleapis-common-protos wheel.

buf needs their sources to lint and compare our protos offline; Python gets their generated code from
the wheel itself, so they are never generated here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import google.rpc

VENDORED = ["google/rpc/status.proto", "google/rpc/error_details.proto", "google/rpc/code.proto"]
TARGET = Path(__file__).resolve().parent.parent / "third_party" / "proto"


def main() -> None:
    wheel_root = Path(next(iter(google.rpc.__path__))).parent.parent
    for relative in VENDORED:
        destination = TARGET / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel_root / relative, destination)
        print(f"vendored {relative}")


if __name__ == "__main__":
    main()
