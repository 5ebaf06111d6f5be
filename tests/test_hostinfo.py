"""Tests for aicn.hostinfo, mostly against a fake /proc and /sys tree."""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from aicn import hostinfo
from aicn.hostinfo import HostInfoReport, collect, collect_in_thread, from_proto, gather, to_proto
from aicn.wire import protocol_pb2 as pb

PCI_IDS = """\
# fake pci.ids
#\tcomment lines start with a hash
10de  NVIDIA Corporation
\t1e04  TU102 [GeForce RTX 2080 Ti]
\t1e07  TU102 [GeForce RTX 2080 Ti Rev. A]
\t\t10de 12fa  TU102 subsystem that must not be taken as a device
8086  Intel Corporation
\t3e92  CoffeeLake-S GT2 [UHD Graphics 630]
C 03  Display controller
\t00  VGA compatible controller
"""


def _cpuinfo(packages: int, cores: int, threads: int, model: str) -> str:
    blocks = []
    n = 0
    for thread in range(threads):
        for pkg in range(packages):
            for core in range(cores):
                blocks.append(
                    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\n"
                    f"physical id\t: {pkg}\nsiblings\t: {cores * threads}\n"
                    f"core id\t\t: {core * 4}\ncpu cores\t: {cores}\nflags\t\t: fpu vme\n"
                )
                n += 1
    return "\n".join(blocks) + "\n"


class FakeTree:
    """Builds a fake root filesystem in a temporary directory."""

    def __init__(self, case):
        self.root = Path(tempfile.mkdtemp())
        case.addCleanup(__import__("shutil").rmtree, self.root)

    def write(self, rel: str, content: str | bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    def disk(self, name, sectors, rotational=None, dev=None, **files):
        self.write(f"sys/block/{name}/size", f"{sectors}\n")
        if rotational is not None:
            self.write(f"sys/block/{name}/queue/rotational", f"{rotational}\n")
        if dev:
            self.write(f"sys/block/{name}/dev", f"{dev}\n")
        for rel, content in files.items():
            self.write(f"sys/block/{name}/{rel.replace('__', '/')}", content)

    def pci(self, slot, cls, vendor, device):
        for name, value in (("class", cls), ("vendor", vendor), ("device", device)):
            self.write(f"sys/bus/pci/devices/{slot}/{name}", f"{value}\n")


def full_tree(case) -> FakeTree:
    t = FakeTree(case)
    t.write("etc/os-release", 'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\n')
    t.write("proc/sys/kernel/osrelease", "5.15.0-105-generic\n")
    t.write("proc/sys/kernel/arch", "x86_64\n")
    t.write("proc/cpuinfo", _cpuinfo(2, 4, 2, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"))
    t.write("proc/meminfo", "MemTotal:       16300000 kB\nMemFree:        1000 kB\n")
    t.write("sys/devices/system/memory/block_size_bytes", "8000000\n")  # 128 MiB
    for i in range(129):
        t.write(f"sys/devices/system/memory/memory{i}/state", "offline\n" if i == 128 else "online\n")
    # NVMe SSD: model and serial from the controller.
    t.disk("nvme0n1", 1953525168, 0, "259:0",
           device__model="Samsung SSD 970 EVO Plus 1TB            \n",
           device__serial="S4EWNX0N123456      \n")
    # SATA HDD: serial from VPD page 0x80 (right-justified, space padded).
    t.disk("sda", 3907029168, 1, "8:0",
           device__model="WDC WD20EJRX-89G\n", device__vendor="ATA     \n",
           device__vpd_pg80=b"\x00\x80\x00\x14" + b"     WD-WCC4M2USUZ1V")
    # SATA SSD without a readable VPD page: serial from the udev database.
    t.disk("sdb", 468862128, 0, "8:16", device__model="TOSHIBA-TR200\n", device__vendor="ATA\n")
    t.write("run/udev/data/b8:16",
            "S:disk/by-id/ata-TOSHIBA-TR200_29KB71U8K46S\nE:ID_SERIAL=TOSHIBA-TR200_29KB71U8K46S\n"
            "E:ID_SERIAL_SHORT=29KB71U8K46S\nG:systemd\n")
    # USB stick: only ID_SERIAL in udev; vendor names the maker when model is missing.
    t.disk("sdc", 60062500, 1, "8:32", device__vendor="SanDisk \n")
    t.write("run/udev/data/b8:32", "E:ID_SERIAL=SanDisk_Ultra_Fit_4C530001\n")
    # virtio-blk: serial file, vendor is a PCI id, no model.
    t.disk("vda", 536870912, 1, "253:0", serial="overlayblk\n", device__vendor="0x1af4\n")
    t.disk("sr0", 2097151, 1, "11:0", device__model="QEMU DVD-ROM\n")
    for virtual in ("loop0", "zram0", "dm-0", "ram0"):
        t.disk(virtual, 1000, 0)
    t.pci("0000:00:02.0", "0x030000", "0x8086", "0x3e92")
    t.pci("0000:00:1f.3", "0x040300", "0x8086", "0xa348")  # audio: not a GPU
    t.pci("0000:01:00.0", "0x030000", "0x10de", "0x1e07")
    t.pci("0000:01:00.1", "0x040300", "0x10de", "0x10f7")
    t.pci("0000:02:00.0", "0x038000", "0x1234", "0x5678")  # unknown to pci.ids
    t.write("usr/share/misc/pci.ids", PCI_IDS)
    return t


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """A pynvml stand-in."""

    def __init__(self, names=(), fail_init=False, fail_name=False):
        self.names = list(names)
        self.fail_init = fail_init
        self.fail_name = fail_name
        self.calls = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, handle):
        if self.fail_name:
            raise FakeNVMLError("GPU is lost")
        return self.names[handle[1]]


class FakeTreeTests(SynchronousTestCase):
    def setUp(self):
        self.tree = full_tree(self)

    def gather(self, nvml=False):
        return gather(self.tree.root, nvml=nvml)

    def test_complete(self):
        report = self.gather()
        self.assertEqual(report.errors, ())
        self.assertTrue(report.ok)
        self.assertEqual(set(report.info), {"os", "cpu", "memory", "disk", "gpu"})
        json.dumps(report.info)  # JSON-ready

    def test_os(self):
        self.assertEqual(self.gather().info["os"], {
            "os": "linux",
            "platform": "ubuntu",
            "platform_family": "debian",
            "platform_version": "22.04",
            "kernel_version": "5.15.0-105-generic",
            "kernel_arch": "x86_64",
        })

    def test_os_family_from_id_like(self):
        self.tree.write("etc/os-release", 'ID="pop"\nID_LIKE="ubuntu debian"\nVERSION_ID=22.04\n')
        os_info = self.gather().info["os"]
        self.assertEqual((os_info["platform"], os_info["platform_family"]), ("pop", "debian"))
        self.tree.write("etc/os-release", "ID=rhel\nVERSION_ID='9.3'\n")
        os_info = self.gather().info["os"]
        self.assertEqual(
            (os_info["platform"], os_info["platform_family"], os_info["platform_version"]),
            ("redhat", "rhel", "9.3"),
        )

    def test_multi_socket_cpu(self):
        self.assertEqual(self.gather().info["cpu"], [
            {"model_name": "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
             "total_cores": 4, "total_threads": 8},
        ] * 2)

    def test_cpu_without_topology(self):
        # Some VMs and ARM kernels: no physical/core ids, model in a header block.
        self.tree.write(
            "proc/cpuinfo",
            "processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\n"
            "Hardware\t: foo\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n",
        )
        self.assertEqual(self.gather().info["cpu"], [
            {"model_name": "ARMv8 Processor rev 1 (v8l)", "total_cores": 2, "total_threads": 2},
        ])

    def test_memory(self):
        self.assertEqual(self.gather().info["memory"], {
            "total_physical_bytes": 128 * 128 * 2**20,  # offline block not counted
            "total_usable_bytes": 16300000 * 1024,
        })

    def test_memory_without_sysfs_blocks(self):
        import shutil

        shutil.rmtree(self.tree.root / "sys/devices/system/memory")
        self.assertEqual(self.gather().info["memory"], {
            "total_physical_bytes": 16300000 * 1024,
            "total_usable_bytes": 16300000 * 1024,
        })

    def test_disks(self):
        self.assertEqual(self.gather().info["disk"], [
            {"drive_type": "SSD", "size_bytes": 1953525168 * 512,
             "model": "Samsung SSD 970 EVO Plus 1TB", "serial_number": "S4EWNX0N123456"},
            {"drive_type": "HDD", "size_bytes": 2000398934016,
             "model": "WDC WD20EJRX-89G", "serial_number": "WD-WCC4M2USUZ1V"},
            {"drive_type": "SSD", "size_bytes": 240057409536,
             "model": "TOSHIBA-TR200", "serial_number": "29KB71U8K46S"},
            {"drive_type": "HDD", "size_bytes": 60062500 * 512,
             "model": "SanDisk", "serial_number": "SanDisk_Ultra_Fit_4C530001"},
            {"drive_type": "ODD", "size_bytes": 2097151 * 512,
             "model": "QEMU DVD-ROM", "serial_number": "unknown"},
            {"drive_type": "HDD", "size_bytes": 256 * 2**30,
             "model": "unknown", "serial_number": "overlayblk"},
        ])

    def test_disk_without_rotational(self):
        self.tree.write("sys/block/sda/queue/rotational", "garbage\n")
        self.assertEqual(self.gather().info["disk"][1]["drive_type"], "Unknown")

    def test_bad_vpd_page_falls_back(self):
        self.tree.write("sys/block/sda/device/vpd_pg80", b"\x00\x83\x00\x04abcd")
        self.assertEqual(self.gather().info["disk"][1]["serial_number"], "unknown")

    def test_gpus_from_pci_ids(self):
        self.assertEqual(self.gather().info["gpu"], [
            {"vendor": "Intel Corporation", "product": "CoffeeLake-S GT2 [UHD Graphics 630]"},
            {"vendor": "NVIDIA Corporation", "product": "TU102 [GeForce RTX 2080 Ti Rev. A]"},
            {"vendor": "0x1234", "product": "0x5678"},
        ])

    def test_pci_ids_other_locations(self):
        (self.tree.root / "usr/share/misc/pci.ids").unlink()
        self.tree.write("usr/share/hwdata/pci.ids.gz", gzip.compress(PCI_IDS.encode()))
        self.assertEqual(self.gather().info["gpu"][0]["vendor"], "Intel Corporation")
        self.tree.write("usr/share/hwdata/pci.ids", PCI_IDS.replace("Intel Corporation", "Intel"))
        self.assertEqual(self.gather().info["gpu"][0]["vendor"], "Intel")

    def test_gpus_without_pci_ids(self):
        (self.tree.root / "usr/share/misc/pci.ids").unlink()
        self.assertEqual(self.gather().info["gpu"], [
            {"vendor": "0x8086", "product": "0x3e92"},
            {"vendor": "0x10de", "product": "0x1e07"},
            {"vendor": "0x1234", "product": "0x5678"},
        ])

    def test_nvml_names_nvidia_cards(self):
        nvml = FakeNVML([b"NVIDIA GeForce RTX 2080 Ti", "NVIDIA H100 80GB HBM3"])
        self.assertEqual(self.gather(nvml=nvml).info["gpu"], [
            {"vendor": "Intel Corporation", "product": "CoffeeLake-S GT2 [UHD Graphics 630]"},
            {"vendor": "0x1234", "product": "0x5678"},
            {"vendor": "NVIDIA", "product": "NVIDIA GeForce RTX 2080 Ti"},
            {"vendor": "NVIDIA", "product": "NVIDIA H100 80GB HBM3"},
        ])
        self.assertEqual(nvml.calls, ["init", "shutdown"])

    def test_gpu_vm_layout(self):
        # As seen on a cloud H100 VM: virtio devices, the GPU as a 3D controller
        # (class 0x0302), no pci.ids, NVML returning str names.
        tree = FakeTree(self)
        tree.pci("0000:00:01.0", "0x018000", "0x1af4", "0x1042")
        tree.pci("0000:00:04.0", "0xffff00", "0x1af4", "0x1053")
        tree.pci("0000:00:06.0", "0x030200", "0x10de", "0x2330")
        self.assertEqual(gather(tree.root, nvml=False).info["gpu"],
                         [{"vendor": "0x10de", "product": "0x2330"}])
        self.assertEqual(gather(tree.root, nvml=FakeNVML(["NVIDIA H100 80GB HBM3"])).info["gpu"],
                         [{"vendor": "NVIDIA", "product": "NVIDIA H100 80GB HBM3"}])

    def test_nvml_errors_fall_back_to_pci(self):
        pci_only = self.gather().info["gpu"]
        for nvml in (FakeNVML(fail_init=True), FakeNVML(["x"], fail_name=True), FakeNVML([])):
            report = self.gather(nvml=nvml)
            self.assertEqual(report.info["gpu"], pci_only)
            self.assertEqual(report.errors, ())
        self.assertEqual(nvml.calls, ["init", "shutdown"])

    def test_pynvml_missing(self):
        # sys.modules[name] = None makes `import pynvml` raise ImportError.
        missing = object()
        saved = sys.modules.get("pynvml", missing)
        sys.modules["pynvml"] = None
        self.addCleanup(
            lambda: sys.modules.pop("pynvml") if saved is missing
            else sys.modules.__setitem__("pynvml", saved)
        )
        with self.assertRaises(ImportError):
            import pynvml  # noqa: F401
        report = self.gather(nvml=True)
        self.assertEqual(report.errors, ())
        self.assertEqual(len(report.info["gpu"]), 3)

    def test_part_failure_keeps_the_rest(self):
        (self.tree.root / "proc/cpuinfo").unlink()
        self.tree.write("proc/meminfo", "MemFree: 1 kB\n")
        report = self.gather()
        self.assertFalse(report.ok)
        self.assertEqual([e.split(":")[0] for e in report.errors], ["cpu", "memory"])
        self.assertIn("cpuinfo", report.error_text)
        self.assertIn("MemTotal", report.error_text)
        self.assertEqual(report.info["cpu"], [])
        self.assertEqual(report.info["memory"], {"total_physical_bytes": 0, "total_usable_bytes": 0})
        self.assertEqual(len(report.info["disk"]), 6)
        self.assertEqual(report.info["os"]["platform"], "ubuntu")

    def test_missing_kernel_version_keeps_distribution(self):
        (self.tree.root / "proc/sys/kernel/osrelease").unlink()
        report = self.gather()
        self.assertEqual(len(report.errors), 1)
        self.assertTrue(report.errors[0].startswith("os: "))
        self.assertEqual(report.info["os"]["platform"], "ubuntu")
        self.assertEqual(report.info["os"]["kernel_version"], "")

    def test_empty_root(self):
        report = gather(FakeTree(self).root, nvml=False)
        self.assertEqual(report.info, hostinfo.empty_info() | {"os": report.info["os"]})
        self.assertEqual({e.split(":")[0] for e in report.errors}, {"os", "cpu", "memory", "disk"})

    def test_collect_returns_info(self):
        self.assertEqual(collect(self.tree.root, nvml=False), self.gather().info)


class ProtoConversionTests(SynchronousTestCase):
    def test_round_trip(self):
        info = gather(full_tree(self).root, nvml=False).info
        msg = to_proto(info)
        wire = pb.HostInfoBody(res=msg).SerializeToString()
        back = pb.HostInfoBody.FromString(wire).res
        self.assertEqual(from_proto(back), info)

    def test_missing_keys(self):
        msg = to_proto({"cpu": [{"model_name": "x"}], "os": {"os": "linux"}})
        out = from_proto(msg)
        self.assertEqual(out["cpu"], [{"model_name": "x", "total_cores": 0, "total_threads": 0}])
        self.assertEqual(out["os"]["os"], "linux")
        self.assertEqual(out["os"]["kernel_arch"], "")
        self.assertEqual(from_proto(to_proto({})), hostinfo.empty_info())

    def test_spec_example(self):
        example = {
            "os": {"os": "windows", "platform": "Microsoft Windows 11 Pro",
                   "platform_family": "Standalone Workstation",
                   "platform_version": "10.0.22631.3737 Build 22631.3737",
                   "kernel_version": "10.0.22631.3737 Build 22631.3737", "kernel_arch": "x86_64"},
            "cpu": [{"model_name": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
                     "total_cores": 6, "total_threads": 12}],
            "memory": {"total_physical_bytes": 17179869184, "total_usable_bytes": 17105440768},
            "disk": [{"drive_type": "HDD", "size_bytes": 2000396321280,
                      "model": "WDC WD20EJRX-89G3VY0", "serial_number": "WD-WCC4M2USUZ1V"}],
            "gpu": [{"vendor": "NVIDIA", "product": "NVIDIA GeForce RTX 2080 Ti"}],
        }
        self.assertEqual(from_proto(pb.HostInfoResponse.FromString(
            to_proto(example).SerializeToString())), example)


class ThreadTests(TestCase):
    """collect_in_thread runs off the reactor thread (real reactor, real pool)."""

    def test_runs_in_pool(self):
        seen = []

        def fake_gather(root, nvml):
            seen.append((threading.get_ident(), root, nvml))
            return HostInfoReport(info={"x": 1})

        self.patch(hostinfo, "gather", fake_gather)
        d = collect_in_thread(reactor, root="/fake", nvml=False)

        def check(report):
            self.assertEqual(report.info, {"x": 1})
            self.assertEqual(seen[0][1:], ("/fake", False))
            self.assertNotEqual(seen[0][0], threading.get_ident())

        return d.addCallback(check)


class RealMachineSmokeTests(TestCase):
    """Collect on the machine running the tests; only types and sanity are checked."""

    def test_real_machine(self):
        def check(report):
            info = report.info
            self.assertIsInstance(report.errors, tuple)
            for key in hostinfo.OS_KEYS:
                self.assertIsInstance(info["os"][key], str)
            if sys.platform.startswith("linux"):
                self.assertTrue(info["os"]["kernel_version"])
                self.assertGreaterEqual(len(info["cpu"]), 1)
                self.assertGreater(info["memory"]["total_usable_bytes"], 0)
                self.assertGreaterEqual(
                    info["memory"]["total_physical_bytes"], info["memory"]["total_usable_bytes"] // 2
                )
            for cpu in info["cpu"]:
                self.assertIsInstance(cpu["model_name"], str)
                self.assertGreaterEqual(cpu["total_threads"], cpu["total_cores"])
                self.assertGreaterEqual(cpu["total_cores"], 1)
            for disk in info["disk"]:
                self.assertIn(disk["drive_type"], ("HDD", "SSD", "ODD", "FDD", "Unknown"))
                self.assertIsInstance(disk["size_bytes"], int)
                self.assertIsInstance(disk["model"], str)
                self.assertIsInstance(disk["serial_number"], str)
            for gpu in info["gpu"]:
                self.assertIsInstance(gpu["vendor"], str)
                self.assertIsInstance(gpu["product"], str)
            to_proto(info).SerializeToString()  # fits the schema's types and ranges
            json.dumps(info)

        return collect_in_thread(reactor).addCallback(check)


class GarbageTests(SynchronousTestCase):
    """Whatever the files contain, gather() returns a complete, encodable report."""

    FILES = (
        "proc/cpuinfo", "proc/meminfo", "etc/os-release", "usr/share/misc/pci.ids",
        "sys/block/sda/device/vpd_pg80", "sys/block/sda/size", "run/udev/data/b8:0",
        "sys/devices/system/memory/block_size_bytes", "sys/bus/pci/devices/0000:01:00.0/class",
    )

    def setUp(self):
        self.tree = full_tree(self)

    def test_absurd_numbers(self):
        self.tree.write("proc/meminfo", "MemTotal: 99999999999999999999999 kB\n")
        self.tree.write("proc/cpuinfo", "processor : 0\nphysical id : x\ncore id : 0\n")
        report = gather(self.tree.root, nvml=False)
        self.assertEqual(report.errors, ())
        self.assertEqual(report.info["cpu"][0]["total_threads"], 1)
        msg = to_proto(report.info)
        self.assertEqual(msg.memory.total_usable_bytes, 2**63 - 1)
        self.assertEqual(to_proto({"disk": [{"size_bytes": -1}]}).disk[0].size_bytes, 0)

    @settings(max_examples=60, deadline=None)
    @given(st.sampled_from(FILES), st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def test_garbage_files(self, rel, content):
        self.tree.write(rel, content)
        report = gather(self.tree.root, nvml=False)
        self.assertEqual(set(report.info), {"os", "cpu", "memory", "disk", "gpu"})
        to_proto(report.info).SerializeToString()
        json.dumps(report.info)
