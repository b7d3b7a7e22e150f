"""xlm-jax: JAX/TPU-native pre-training of cross-lingual encoders."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent
_REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (_HERE / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]
# The `tpu` extra installs libtpu through jax[tpu] at the lowest jax the requirements allow
# (jax>=X,<Y gives jax[tpu]==X), so jax, jaxlib and libtpu are one matching release.
_JAX_VERSION = next(r.split(">=")[1].split(",")[0] for r in _REQUIREMENTS if r.startswith("jax>="))

setuptools.setup(
    name="xlm-jax",
    version="0.1.0",
    description="Pre-training cross-lingual encoders (XLM-R and friends) in JAX/Flax.",
    long_description=(_HERE / "README.md").read_text() if (_HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["xlm_jax", "xlm_jax.*", "data_prep", "data_prep.*"]),
    install_requires=_REQUIREMENTS,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3"],
        # Hugging Face interop beyond safetensors: logit-parity tests, reading pytorch_model.bin.
        # Training never needs it. torch is pinned to the version whose CPU build CI installs;
        # any torch >= 2.4 works for a user who installs it another way.
        "hf": ["transformers>=5.0,<6", "torch==2.13.0"],
        # libtpu: the TPU runtime, and the compiler `xlm-jax compile` needs (no TPU needed).
        "tpu": [f"jax[tpu]=={_JAX_VERSION}"],
    },
    entry_points={"console_scripts": ["xlm-jax=xlm_jax.cli:main"]},
)
