import glob
import importlib.util
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def environment():
    """involution_d2/environment.py (standard library only), which holds the versions."""
    path = os.path.join(HERE, "involution_d2", "environment.py")
    spec = importlib.util.spec_from_file_location("involution_d2_environment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ENV = environment()


def model_zoo_configs():
    """configs/ as package data of involution_d2.model_zoo (as Detectron2 ships its own):
    linked into the package before the build, so that an installed package has them."""
    source = os.path.join(HERE, "configs")
    link = os.path.join(HERE, "involution_d2", "model_zoo", "configs")
    if not os.path.lexists(link):
        os.symlink(os.path.relpath(source, os.path.dirname(link)), link)
    return [os.path.relpath(p, os.path.dirname(link)) for ext in ("yaml", "py")
            for p in glob.glob(os.path.join(link, "**", "*." + ext), recursive=True)]



setup(
    name="involution-d2",
    version="0.1.0",
    description="Involution (CVPR'21) and RedNet for Detectron2, with fast CUDA kernels",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["involution_d2", "involution_d2.*"]),
    package_data={"involution_d2.ops": ["cuda/*.cuh", "csrc/*.cpp"],
                  "involution_d2.model_zoo": model_zoo_configs()},
    # torch and torchvision come first (the user's, or the pinned pair), and Detectron2 (on
    # no package index) is built against that torch: tools/install.py does all three.
    # Everything else this package, its configs, tools and tests import is declared here;
    # the bounds of fvcore, iopath and omegaconf are Detectron2's own.
    install_requires=[
        f"torch>={ENV.MIN_TORCH}",
        "torchvision",
        "numpy",
        "opencv-python-headless",  # transforms; Detectron2's Visualizer (demo.py)
        "ninja",  # torch.utils.cpp_extension builds the native CPU kernel with it on first use
        "fvcore>=0.1.5,<0.1.6",  # FLOP counting, weight init, LR schedules, PreciseBN
        "iopath>=0.1.7,<0.1.10",
        "omegaconf>=2.1,<2.4",  # LazyConfig
        "hydra-core>=1.1",  # LazyConfig override parsing
        "pycocotools>=2.0.2",  # COCO evaluation of the detectors
        "Pillow>=7.1",
        "tabulate",
        "tqdm",
        "tensorboard",  # train_net.py's event writer
        ENV.SETUPTOOLS,  # the configs import detectron2.model_zoo, which imports pkg_resources
    ],
    entry_points={"console_scripts": ["involution-convert=involution_d2.checkpoint.cli:main"]},
    extras_require={
        # ONNX export (tools/export_model.py) and its check; the tests run it too.
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "test": ["pytest>=7", "onnx", "onnxscript", "onnxruntime"],
        # The CUDA kernels: the CuPy wheel for torch's CUDA (tools/install.py picks it).
        **{f"cupy-cuda{major}x": [wheel] for major, wheel in ENV.CUPY_WHEELS.items()},
    },
)
