from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and not line.startswith("pytest")
]

setup(
    name="vlpeft",
    version="0.1.0",
    description="Parameter- and computation-efficient transfer learning of vision-language models "
    "(DAS, DVP/KAB-APP) on PyTorch Lightning 2",
    packages=find_packages(include=["vlpeft", "vlpeft.*", "write_arrow"]),
    py_modules=["run"],
    python_requires=">=3.10",
    install_requires=requirements,
    extras_require={"test": ["pytest>=8"]},
)
