"""Check host info on a machine with an NVIDIA GPU (run by hand there).

    python -m tests.support.gpu_hostinfo_check

Prints what ``aicn.hostinfo.collect()`` reports and checks that NVML found
the GPUs (vendor NVIDIA, products named as ``nvidia-smi`` names them), that
the PCI fallback still sees them without NVML, and that the report survives
the protobuf round trip of a HOST_INFO answer.  Exits non-zero on a mismatch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from aicn import hostinfo


def main() -> int:
    report = hostinfo.gather()
    print(json.dumps(report.info, indent=1))
    print("errors:", report.errors)
    problems = []
    smi = shutil.which("nvidia-smi")
    names = []
    if smi:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        print("nvidia-smi:", names)
    nvidia = [g for g in report.info["gpu"] if g["vendor"] == "NVIDIA"]
    if names and sorted(g["product"] for g in nvidia) != sorted(names):
        problems.append(f"NVML products {[g['product'] for g in nvidia]} != nvidia-smi {names}")
    if not nvidia:
        problems.append("no NVIDIA GPU reported")
    without_nvml = hostinfo.collect(nvml=False)
    print("PCI fallback:", without_nvml["gpu"])
    if names and len(without_nvml["gpu"]) < len(names):
        problems.append("PCI fallback sees fewer GPUs than nvidia-smi")
    again = hostinfo.from_proto(hostinfo.to_proto(report.info))
    if again["gpu"] != report.info["gpu"] or again["cpu"] != report.info["cpu"]:
        problems.append("protobuf round trip changed the report")
    for p in problems:
        print("PROBLEM:", p)
    print("GPU host info check:", "FAILED" if problems else "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
