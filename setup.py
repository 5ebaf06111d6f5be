"""Packaging for aicn, the Python/Twisted node of the DBC AI computing network."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "aicn" / "__init__.py").read_text()).group(1)

setup(
    name="aicn",
    version=VERSION,
    description="A Python/Twisted node for the DeepBrainChain decentralized AI computing network",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["aicn", "aicn.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["aicn_plugin.py"], "aicn.api": ["static/*"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "protobuf>=7.35,<8",
        "cryptography>=42",
        "coincurve>=20",
        "pycryptodome>=3.20",
        "psutil>=5.9",
        "nvidia-ml-py>=12.535",
        "multiaddr>=0.0.9,<0.3",
        "attrs>=23.1",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": [
            "hypothesis>=6.100",
            "grpcio-tools>=1.85,<2",
            "openai>=1.0",
            "selenium>=4.20",
        ],
    },
    entry_points={"console_scripts": ["aicn = aicn.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
