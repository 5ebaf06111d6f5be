"""Host information for ``/api/v0/host/info`` and HOST_INFO requests.

The result has the shape of the Go node's ``types.HostInfo``::

    {"os": {"os", "platform", "platform_family", "platform_version",
            "kernel_version", "kernel_arch"},
     "cpu": [{"model_name", "total_cores", "total_threads"}],   # one per package
     "memory": {"total_physical_bytes", "total_usable_bytes"},
     "disk": [{"drive_type", "size_bytes", "model", "serial_number"}],
     "gpu": [{"vendor", "product"}]}

Everything is read from ``/proc`` and ``/sys`` below an injectable ``root`` so
that tests can use a fake tree; only NVML (``nvidia-ml-py``), when a driver is
present, talks to the real machine.  The Go node used gopsutil and ghw; the
values follow their conventions (``"HDD"``/``"SSD"``, ``"unknown"`` for a disk
model or serial that cannot be read) with two deliberate differences: GPUs
driven by NVIDIA's driver are named by NVML (``"NVIDIA"``, ``"NVIDIA GeForce
RTX 2080 Ti"``) rather than by PCI id, and a GPU whose name is unknown is
reported with its hex PCI ids instead of being dropped.

A failure in one part (say, an unreadable ``/proc/cpuinfo``) is recorded in
:attr:`HostInfoReport.errors` and the other parts are still collected; the
caller answers with code 1011 and :attr:`HostInfoReport.error_text` while still
sending the partial data, as the Go node does.

Collection does blocking file I/O (and NVML calls), so the reactor should use
:func:`collect_in_thread`.
"""

from __future__ import annotations

import gzip
import os
import platform
import shlex
from pathlib import Path
from typing import Any, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from aicn.log import Logger

log = Logger()

#: What ghw reports for a disk model or serial number it cannot find.
UNKNOWN = "unknown"

OS_KEYS = (
    "os",
    "platform",
    "platform_family",
    "platform_version",
    "kernel_version",
    "kernel_arch",
)

#: Where distributions install the PCI ID database (relative to ``root``).
PCI_IDS_PATHS = (
    "usr/share/misc/pci.ids",
    "usr/share/hwdata/pci.ids",
    "usr/share/pci.ids",
    "usr/share/misc/pci.ids.gz",
    "usr/share/hwdata/pci.ids.gz",
)

#: /sys/block entries that are not disks.
_VIRTUAL_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-")

_NVIDIA_PCI_VENDOR = 0x10DE

# os-release ID -> gopsutil's platform_family.
_PLATFORM_FAMILY = {
    **dict.fromkeys(("debian", "ubuntu", "linuxmint", "raspbian"), "debian"),
    **dict.fromkeys(
        (
            "rhel",
            "redhat",
            "centos",
            "oracle",
            "ol",
            "scientific",
            "amazon",
            "amzn",
            "xenserver",
            "cloudlinux",
            "ibm_powerkvm",
            "rocky",
            "almalinux",
        ),
        "rhel",
    ),
    **dict.fromkeys(
        ("suse", "opensuse", "opensuse-leap", "opensuse-tumbleweed", "sles", "sled", "caasp"),
        "suse",
    ),
    **dict.fromkeys(("arch", "manjaro"), "arch"),
    **{
        name: name
        for name in ("fedora", "alpine", "gentoo", "coreos", "exherbo", "solus", "neokylin")
    },
}
# os-release IDs that gopsutil spells differently as platform.
_PLATFORM_ALIASES = {"rhel": "redhat", "ol": "oracle", "amzn": "amazon"}


@attrs.frozen
class HostInfoReport:
    """The collected host information plus the errors met on the way."""

    #: The JSON-ready HostInfo dict (always complete in shape).
    info: dict[str, Any]
    #: One human-readable line per part that failed.
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every part was collected."""
        return not self.errors

    @property
    def error_text(self) -> str:
        """The errors as one message, for ``result_message`` / the API's ``message``."""
        return "; ".join(self.errors)


def empty_info() -> dict[str, Any]:
    """A HostInfo dict with every field at its zero value."""
    return {
        "os": dict.fromkeys(OS_KEYS, ""),
        "cpu": [],
        "memory": {"total_physical_bytes": 0, "total_usable_bytes": 0},
        "disk": [],
        "gpu": [],
    }


def gather(root: str | os.PathLike = "/", nvml: Any = True) -> HostInfoReport:
    """Collect host information (blocking) and report per-part errors.

    ``nvml`` is ``True`` to ask NVML (via ``pynvml``) for NVIDIA GPUs, ``False``
    to use only PCI data, or a ``pynvml``-like object (for tests).  NVML
    describes the real machine even when ``root`` is a fake tree.
    """
    tree = _Tree(root)
    info = empty_info()
    errors: list[str] = []
    parts = (
        ("os", lambda: _collect_os(tree, errors)),
        ("cpu", lambda: _collect_cpus(tree)),
        ("memory", lambda: _collect_memory(tree)),
        ("disk", lambda: _collect_disks(tree)),
        ("gpu", lambda: _collect_gpus(tree, nvml)),
    )
    for name, part in parts:
        try:
            info[name] = part()
        except Exception as exc:  # record and go on: one bad part must not lose the rest
            log.warn("Collecting host info part {part} failed: {error}", part=name, error=exc)
            errors.append(f"{name}: {exc}")
    return HostInfoReport(info=info, errors=tuple(errors))


def collect(root: str | os.PathLike = "/", nvml: Any = True) -> dict[str, Any]:
    """The HostInfo dict alone (blocking); see :func:`gather` for errors."""
    return gather(root, nvml).info


def collect_in_thread(
    reactor, root: str | os.PathLike = "/", nvml: Any = True
) -> Deferred[HostInfoReport]:
    """Run :func:`gather` in the reactor's thread pool; fires with a :class:`HostInfoReport`."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), gather, root, nvml)


# -- protobuf conversion -------------------------------------------------------------


def to_proto(info: Mapping[str, Any]):
    """Convert a HostInfo dict to ``protocol.HostInfoResponse`` (missing keys → zero)."""
    from aicn.wire.protocol_pb2 import HostInfoResponse as R

    os_info = info.get("os") or {}
    memory = info.get("memory") or {}
    return R(
        os=R.OSInfo(**{key: str(os_info.get(key) or "") for key in OS_KEYS}),
        cpu=[
            R.CpuInfo(
                model_name=str(c.get("model_name") or ""),
                total_cores=_u32(c.get("total_cores")),
                total_threads=_u32(c.get("total_threads")),
            )
            for c in info.get("cpu") or ()
        ],
        memory=R.MemoryInfo(
            total_physical_bytes=_i64(memory.get("total_physical_bytes")),
            total_usable_bytes=_i64(memory.get("total_usable_bytes")),
        ),
        disk=[
            R.DiskInfo(
                drive_type=str(d.get("drive_type") or ""),
                size_bytes=_u64(d.get("size_bytes")),
                model=str(d.get("model") or ""),
                serial_number=str(d.get("serial_number") or ""),
            )
            for d in info.get("disk") or ()
        ],
        gpu=[
            R.GpuInfo(vendor=str(g.get("vendor") or ""), product=str(g.get("product") or ""))
            for g in info.get("gpu") or ()
        ],
    )


def _clamp(value: Any, low: int, high: int) -> int:
    # Out-of-range numbers (a bogus /proc value) must not make encoding fail.
    return min(max(int(value or 0), low), high)


def _u32(value: Any) -> int:
    return _clamp(value, 0, 2**32 - 1)


def _u64(value: Any) -> int:
    return _clamp(value, 0, 2**64 - 1)


def _i64(value: Any) -> int:
    return _clamp(value, -(2**63), 2**63 - 1)


def from_proto(msg) -> dict[str, Any]:
    """Convert a ``protocol.HostInfoResponse`` to the API's JSON dict (all keys present)."""
    return {
        "os": {key: getattr(msg.os, key) for key in OS_KEYS},
        "cpu": [
            {"model_name": c.model_name, "total_cores": c.total_cores, "total_threads": c.total_threads}
            for c in msg.cpu
        ],
        "memory": {
            "total_physical_bytes": msg.memory.total_physical_bytes,
            "total_usable_bytes": msg.memory.total_usable_bytes,
        },
        "disk": [
            {
                "drive_type": d.drive_type,
                "size_bytes": d.size_bytes,
                "model": d.model,
                "serial_number": d.serial_number,
            }
            for d in msg.disk
        ],
        "gpu": [{"vendor": g.vendor, "product": g.product} for g in msg.gpu],
    }


# -- file access below root ------------------------------------------------------------


class _Tree:
    """Read files relative to a root directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def read(self, rel: str | Path) -> str | None:
        """The file's text, stripped; ``None`` if it cannot be read."""
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", "replace").strip()

    def read_bytes(self, rel: str | Path) -> bytes | None:
        path = rel if isinstance(rel, Path) else self.path(rel)
        try:
            return path.read_bytes()
        except OSError:
            return None

    def must_read(self, rel: str) -> str:
        """The file's text; raises ``OSError`` (a collection error) if unreadable."""
        return self.path(rel).read_text(encoding="utf-8", errors="replace")


# -- OS --------------------------------------------------------------------------------


def _parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:  # unbalanced quotes: keep the raw text
            parts = [value.strip("\"'")]
        values[key.strip()] = " ".join(parts)
    return values


def _collect_os(tree: _Tree, errors: list[str]) -> dict[str, str]:
    release = {}
    for rel in ("etc/os-release", "usr/lib/os-release", "etc/lsb-release"):
        text = tree.read(rel)
        if text is not None:
            release = _parse_os_release(text)
            break
    distro = (release.get("ID") or release.get("DISTRIB_ID") or "").lower()
    family = _PLATFORM_FAMILY.get(distro, "")
    if not family:
        for like in release.get("ID_LIKE", "").lower().split():
            if like in _PLATFORM_FAMILY:
                family = _PLATFORM_FAMILY[like]
                break
    arch = tree.read("proc/sys/kernel/arch") or platform.machine()
    try:
        kernel = tree.must_read("proc/sys/kernel/osrelease").strip()
    except OSError as exc:  # keep the distribution fields anyway
        errors.append(f"os: {exc}")
        kernel = ""
    return {
        "os": platform.system().lower() or "linux",
        "platform": _PLATFORM_ALIASES.get(distro, distro),
        "platform_family": family,
        "platform_version": release.get("VERSION_ID") or release.get("DISTRIB_RELEASE") or "",
        "kernel_version": kernel,
        "kernel_arch": arch,
    }


# -- CPU -------------------------------------------------------------------------------


def _collect_cpus(tree: _Tree) -> list[dict[str, Any]]:
    """One entry per physical package, from ``/proc/cpuinfo``."""
    packages: dict[int, dict[str, Any]] = {}
    fallback_model = ""
    for block in tree.must_read("proc/cpuinfo").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if "processor" not in fields or not fields["processor"].isdigit():
            # Header blocks (some ARM kernels) carry the model for all CPUs.
            fallback_model = fields.get("model name") or fields.get("processor") or fallback_model
            continue
        package_id = fields.get("physical id", "0")
        package_id = int(package_id) if package_id.isdigit() else 0
        pkg = packages.setdefault(
            package_id, {"model": "", "threads": 0, "cores": set(), "cpu_cores": 0}
        )
        pkg["threads"] += 1
        pkg["model"] = pkg["model"] or fields.get("model name") or fields.get("cpu model", "")
        if "core id" in fields:
            pkg["cores"].add(fields["core id"])
        if fields.get("cpu cores", "").isdigit():
            pkg["cpu_cores"] = int(fields["cpu cores"])
    if not packages:
        raise ValueError("no processors in /proc/cpuinfo")
    return [
        {
            "model_name": pkg["model"] or fallback_model,
            "total_cores": len(pkg["cores"]) or pkg["cpu_cores"] or pkg["threads"],
            "total_threads": pkg["threads"],
        }
        for _, pkg in sorted(packages.items())
    ]


# -- memory ----------------------------------------------------------------------------


def _collect_memory(tree: _Tree) -> dict[str, int]:
    usable = 0
    for line in tree.must_read("proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            amount = line.split()[1:]
            usable = int(amount[0]) * (1024 if amount[1:] == ["kB"] else 1)
            break
    else:
        raise ValueError("MemTotal missing from /proc/meminfo")
    return {"total_physical_bytes": _physical_memory(tree) or usable, "total_usable_bytes": usable}


def _physical_memory(tree: _Tree) -> int:
    """Online memory blocks × block size (as ghw), or 0 if sysfs does not tell."""
    base = tree.path("sys/devices/system/memory")
    block_size = tree.read(base / "block_size_bytes")
    if not block_size:
        return 0
    try:
        size = int(block_size, 16)
    except ValueError:
        return 0
    try:
        blocks = [p for p in base.iterdir() if p.name.startswith("memory") and p.name[6:].isdigit()]
    except OSError:
        return 0
    return size * sum(1 for p in blocks if tree.read(p / "state") == "online")


# -- disks -----------------------------------------------------------------------------


def _collect_disks(tree: _Tree) -> list[dict[str, Any]]:
    base = tree.path("sys/block")
    disks = []
    for dev in sorted(base.iterdir(), key=lambda p: p.name):
        if dev.name.startswith(_VIRTUAL_BLOCK_PREFIXES):
            continue
        sectors = tree.read(dev / "size")
        udev = _udev_properties(tree, dev)
        disks.append(
            {
                "drive_type": _drive_type(tree, dev),
                "size_bytes": int(sectors) * 512 if sectors and sectors.isdigit() else 0,
                "model": _first(
                    tree.read(dev / "device" / "model"),
                    udev.get("ID_MODEL"),
                    _scsi_vendor(tree.read(dev / "device" / "vendor")),
                ),
                "serial_number": _first(
                    tree.read(dev / "device" / "serial"),  # nvme controller
                    tree.read(dev / "serial"),  # virtio-blk
                    _vpd_serial(tree.read_bytes(dev / "device" / "vpd_pg80")),  # SCSI/SATA
                    udev.get("ID_SERIAL_SHORT"),
                    udev.get("ID_SERIAL"),
                ),
            }
        )
    return disks


def _first(*candidates: str | None) -> str:
    for value in candidates:
        if value and value.strip():
            return value.strip()
    return UNKNOWN


def _scsi_vendor(vendor: str | None) -> str | None:
    # A SCSI vendor names the maker when the model is missing; virtio's
    # device/vendor is a PCI id ("0x1af4") and ATA disks all say "ATA".
    if not vendor or vendor.startswith("0x") or vendor == "ATA":
        return None
    return vendor


def _drive_type(tree: _Tree, dev: Path) -> str:
    # ghw's names: optical and floppy drives by name, the rest by rotation.
    if dev.name.startswith("sr"):
        return "ODD"
    if dev.name.startswith("fd"):
        return "FDD"
    rotational = tree.read(dev / "queue" / "rotational")
    return {"1": "HDD", "0": "SSD"}.get(rotational or "", "Unknown")


def _vpd_serial(page: bytes | None) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (header: 0, 0x80, len16)."""
    if not page or len(page) < 4 or page[1] != 0x80:
        return None
    length = int.from_bytes(page[2:4], "big")
    return page[4 : 4 + length].decode("ascii", "replace").strip(" \0")


def _udev_properties(tree: _Tree, dev: Path) -> dict[str, str]:
    numbers = tree.read(dev / "dev")  # "major:minor"
    if not numbers:
        return {}
    text = tree.read(f"run/udev/data/b{numbers}")
    props = {}
    for line in (text or "").splitlines():
        if line.startswith("E:"):
            key, _, value = line[2:].partition("=")
            props[key] = value
    return props


# -- GPUs ------------------------------------------------------------------------------


def _collect_gpus(tree: _Tree, nvml: Any) -> list[dict[str, str]]:
    pci = _pci_display_devices(tree)
    nvidia = _nvml_gpus(nvml) if nvml else None
    if not nvidia:
        return [{"vendor": vendor, "product": product} for _, vendor, product in pci]
    # NVML names NVIDIA cards better than pci.ids; keep the other cards from PCI.
    others = [
        {"vendor": vendor, "product": product}
        for vendor_id, vendor, product in pci
        if vendor_id != _NVIDIA_PCI_VENDOR
    ]
    return others + nvidia


def _nvml_gpus(nvml: Any) -> list[dict[str, str]] | None:
    """NVIDIA GPUs from NVML, or ``None`` when NVML is unavailable."""
    try:
        if nvml is True:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception as exc:  # ImportError, NVMLError (no driver/library), OSError
        log.debug("NVML unavailable, using PCI data for GPUs: {error}", error=exc)
        return None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index))
            if isinstance(name, bytes):  # older pynvml versions return bytes
                name = name.decode("utf-8", "replace")
            gpus.append({"vendor": "NVIDIA", "product": name.strip()})
        return gpus
    except Exception as exc:
        log.debug("NVML query failed, using PCI data for GPUs: {error}", error=exc)
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _pci_display_devices(tree: _Tree) -> list[tuple[int, str, str]]:
    """``(vendor_id, vendor_name, product_name)`` for PCI class 0x03 devices."""
    base = tree.path("sys/bus/pci/devices")
    if not base.is_dir():
        return []
    found = []
    for dev in sorted(base.iterdir(), key=lambda p: p.name):
        try:
            pci_class = int(tree.read(dev / "class") or "", 16)
            vendor_id = int(tree.read(dev / "vendor") or "", 16)
            device_id = int(tree.read(dev / "device") or "", 16)
        except ValueError:
            continue
        if pci_class >> 16 == 0x03:
            found.append((vendor_id, device_id))
    if not found:
        return []
    vendors, devices = _pci_names(tree, found)
    return [
        (
            vendor_id,
            vendors.get(vendor_id, f"0x{vendor_id:04x}"),
            devices.get((vendor_id, device_id), f"0x{device_id:04x}"),
        )
        for vendor_id, device_id in found
    ]


def _pci_names(
    tree: _Tree, wanted: list[tuple[int, int]]
) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """Vendor and device names for ``wanted`` from the first pci.ids found."""
    lines = None
    for rel in PCI_IDS_PATHS:
        raw = tree.read_bytes(rel)
        if raw is None:
            continue
        try:
            if rel.endswith(".gz"):
                raw = gzip.decompress(raw)
        except (OSError, EOFError):
            continue
        lines = raw.decode("utf-8", "replace").splitlines()
        break
    vendors: dict[int, str] = {}
    devices: dict[tuple[int, int], str] = {}
    if lines is None:
        log.debug("No pci.ids database; GPUs are named by PCI id")
        return vendors, devices
    wanted_vendors = {v for v, _ in wanted}
    wanted_devices = set(wanted)
    vendor = None
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.startswith("C "):  # the device-class section follows the vendors
            break
        if not line.startswith("\t"):
            ident, _, name = line.partition(" ")
            try:
                vendor = int(ident, 16)
            except ValueError:
                vendor = None
                continue
            if vendor in wanted_vendors:
                vendors[vendor] = name.strip()
        elif vendor in wanted_vendors and not line.startswith("\t\t"):
            ident, _, name = line[1:].partition(" ")
            try:
                key = (vendor, int(ident, 16))
            except ValueError:
                continue
            if key in wanted_devices:
                devices[key] = name.strip()
    return vendors, devices
