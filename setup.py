"""Installs the cwm package and its twistd plugins."""

from setuptools import find_packages, setup

setup(
    name="cwm",
    version="0.1.0",
    description="Self-hosted webhook receiver and router built on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["cwm", "cwm.*"]) + ["twisted.plugins"],
    package_data={"cwm": ["py.typed"]},
    install_requires=[
        "Twisted>=24.7,<27",
        "klein>=24.8,<25",
        "treq>=24.9,<27",
        "PyJWT[crypto]>=2.8,<3",
        "jsonschema>=4.21,<5",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-twisted>=1.14,<2",
            "mypy>=1.10",
            "mypy-zope>=1.0.14",
        ],
    },
)
