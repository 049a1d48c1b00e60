"""The two compiled parts: gateway/_wire.c (AES-GCM packet sealing for the
relay, linked against the system's OpenSSL libcrypto) and recorder/_escape.c
(JSON escaping of recorded output). Both are optional: when one cannot be
built (no compiler, no libssl-dev), the install still succeeds and
gateway.sshtune or recorder.cast uses its pure-Python path. Everything else
is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway._wire",
            ["gateway/_wire.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "recorder._escape",
            ["recorder/_escape.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
