"""deps: once-for-all supernet training with DεpS (Delayed ε-Shrinking, ECCV 2024, arXiv 2407.06167).

The three folders of the design card install as three packages: ``deps_core`` (the library), ``deps_kernels`` (Triton
kernels, from ``kernels/``) and ``deps_loaders`` (FFCV writers and loaders, from ``loaders/``). Plain ``kernels`` and
``loaders`` would collide with other distributions' top-level packages.
"""

from setuptools import find_packages, setup

VERSION = "0.1.0"


def _packages(folder: str, name: str) -> tuple[list[str], dict[str, str]]:
    subs = find_packages(folder)
    return [name] + [f"{name}.{s}" for s in subs], {name: folder} | {
        f"{name}.{s}": f"{folder}/{s.replace('.', '/')}" for s in subs
    }


packages, package_dir = [], {}
for folder, name in (("deps_core", "deps_core"), ("kernels", "deps_kernels"), ("loaders", "deps_loaders")):
    p, d = _packages(folder, name)
    packages += p
    package_dir |= d

setup(
    name="deps",
    version=VERSION,
    description="Once-for-all supernet training with DεpS (Delayed ε-Shrinking) on torch.func, Triton and FFCV",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"deps_core": ["presets/*.json"]},
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "triton; platform_system == 'Linux'",
        "ffcv==1.0.2",
        "einops",
        "attrs>=23.1",
        "numpy",
        "opencv-python",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "ruff", "ofa==0.1.0.post202307202001", "onnx"],
        "onnx": ["onnx"],
    },
    entry_points={"console_scripts": ["deps = deps_core.cli:main"]},
)
