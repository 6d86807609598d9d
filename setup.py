"""
metagateway: an API gateway on Twisted.
"""

from setuptools import find_packages, setup

setup(
    name="metagateway",
    version="0.1.0",
    description="An API gateway on Twisted: JWT logins, per-route token checks, "
    "prefix-rewriting streaming proxy.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/metagateway_plugin.py"]},
    install_requires=[
        "twisted[tls]>=25.5",
        "treq>=23.11",
        "klein>=23.5",
        "pyjwt[crypto]>=2.8",
        "zope.interface>=6",
        "botocore>=1.31",
        "txredisapi>=1.4",
        "prometheus_client>=0.17",
        'tomli>=1.1; python_version < "3.11"',
    ],
    extras_require={
        # OpenTelemetry spans, exported over OTLP/HTTP when the OTEL_*
        # variables name an exporter (docs/observability.rst).
        "otel": [
            "opentelemetry-sdk>=1.20",
            "opentelemetry-exporter-otlp-proto-http>=1.20",
        ],
        "test": [
            "moto[s3,server]>=5",
            "boto3",
            "autobahn",
        ],
        # bench/run.py's chart and bench/soak.py's plot.
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "metagateway-admin = metagateway.admin:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: Implementation :: PyPy",
    ],
)
