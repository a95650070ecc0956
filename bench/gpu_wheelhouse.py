#!/usr/bin/env python3
"""`make gpu-wheelhouse`: the wheels the GPU machine of `bench/gpu_check.sh` lacks, for its Python
3.12 (x86-64, no package registry there), into one ignored folder the `device` tool can carry
(under 64 MiB in all), with a manifest of names, versions, files, sizes and SHA-256 sums.

Carried, at the versions this machine's venv has: DeepSpeed (built here from its sdist as a
pure-Python wheel; its ops compile just in time, none are used), megatron-core, transformers
(ours is newer than the machine's), and what DeepSpeed and megatron-core need that the machine
does not have (hjson, pydantic and its parts, typing-extensions; regex at the version transformers
asks for). Torch, Triton, tokenizers,
safetensors, pybind11, pytest, tensorboard, matplotlib and the rest are the machine's own. This
project itself travels as the working tree; its C++ extension is compiled there at install
(pybind11 and a compiler are there).

    python bench/gpu_wheelhouse.py --output-dir .gpu_wheelhouse
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BINARY = ["megatron-core", "transformers", "regex", "hjson", "pydantic", "pydantic-core", "annotated-types",
          "typing-inspection", "typing-extensions"]  # regex: transformers checks its version at import
BUILT_HERE = ["deepspeed"]  # sdist only on the registry: built into a py3-none-any wheel
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
LIMIT_MIB = 60  # the device tool carries 64 MiB with the working tree
MANIFEST = "MANIFEST.json"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"], check=True)


def build(out: Path) -> dict:
    versions = {name: importlib.metadata.version(name) for name in BINARY + BUILT_HERE}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
             *[f"--platform={p}" for p in PLATFORMS], "--dest", tmp, *[f"{n}=={versions[n]}" for n in BINARY])
        _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", tmp,
             *[f"{n}=={versions[n]}" for n in BUILT_HERE])
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != len(versions):
            raise SystemExit(f"expected {len(versions)} wheels, got {[w.name for w in wheels]}")
        total = sum(w.stat().st_size for w in wheels)
        if total > LIMIT_MIB * 2**20:
            raise SystemExit(f"the wheels take {total / 2**20:.1f} MiB, over {LIMIT_MIB} MiB")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.whl"):
            old.unlink()
        entries = []
        for wheel in wheels:
            data = wheel.read_bytes()
            name = next(n for n in versions if wheel.name.lower().startswith(n.replace("-", "_") + "-"))
            entries.append({"name": name, "version": versions[name], "file": wheel.name, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
            wheel.replace(out / wheel.name)
    manifest = {"python": "3.12", "platforms": PLATFORMS, "total_bytes": total, "wheels": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path(".gpu_wheelhouse"))
    args = parser.parse_args(argv)
    manifest = build(args.output_dir.resolve())
    for entry in manifest["wheels"]:
        print(f"  {entry['name']:20} {entry['version']:10} {entry['bytes'] / 2**20:6.2f} MiB  {entry['file']}")
    print(f"wrote {len(manifest['wheels'])} wheels ({manifest['total_bytes'] / 2**20:.1f} MiB) and {MANIFEST} "
          f"to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
