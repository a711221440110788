from setuptools import find_packages, setup

setup(
    name="aw_detection",
    version="0.1.0",
    description="Weight-shaped attention (AW-convolution) and attention-augmented convolution "
    "for Detectron2",
    license="Apache-2.0",
    packages=find_packages(include=["aw_detection", "aw_detection.*"]),
    python_requires=">=3.9",
    # torch, torchvision and Detectron2 are installed by scripts/setup_env.sh (see README):
    # there is no Detectron2 distribution a resolver could pick up on its own.
    install_requires=["fvcore", "pycocotools", "matplotlib", "Pillow", "numpy", "tabulate", "scipy"],
)
