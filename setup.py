"""crema_jax: CREMA ECG foundation models in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array-record>=0.8",   # ArrayRecord shards of the preprocessed cache (read by Grain).
    "numpy>=2.0",
    "scipy>=1.13",         # Butterworth/notch filters and polyphase resampling.
    "numba>=0.60",         # Compiled, GIL-free preprocessing loops (data/kernels.py): an exact
                           # running median and scipy's IIR recursions, 1.3-6x faster.
    "wfdb>=4.1",
    "h5py>=3.8",           # CODE-15%'s exams_part*.hdf5 (the code15 layout reads one exam a time).
    "absl-py>=2.1",
    "ml_collections>=1.0",  # Python config files with --config.FIELD overrides (big_vision style).
    "safetensors>=0.4",    # Pickle-free weight files for PyTorch interchange.
    "matplotlib>=3.8",     # Preview, reconstruction and evaluation PNGs.
    "tensorboardX>=2.6",   # TensorBoard event files without TensorFlow.
    "fsspec>=2024.6",      # gs://, s3:// (and memory://) paths of prepare and the cache:
                           # runtime/storage.py says why fsspec.
]
# Hospital ECG exports (the clinical_exports layout, data/reading/clinical_formats.py): pydicom
# reads DICOM waveforms, edfio EDF/EDF+ (numpy only), defusedxml guards the XML parser (HL7 aECG,
# GE MUSE, Philips) against entity expansion and external references; ecgdatakit (Apache-2.0;
# numpy, defusedxml, xmltodict) decodes SCP-ECG (Huffman, differences, reference-beat
# subtraction), used for that format alone (data/reading/scp_ecg.py). Philips' XLI is decoded in
# data/reading/philips_xml.py (7x faster than a byte-at-a-time decoder).
CLINICAL = ["pydicom>=3.0", "edfio>=0.4", "defusedxml>=0.7", "ecgdatakit>=2.0.3"]

setuptools.setup(
    name="crema_jax",
    version="0.1.0",
    description="CREMA: contrastive regularized masked autoencoders for 12-lead ECG, in JAX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["crema_jax", "crema_jax.*"]),
    package_data={"crema_jax.data": ["sample_data/*", "sample_data/**/*"],
                  "crema_jax.inference": ["ecgfounder_labels.txt"],  # predict's label names
                  "crema_jax.models": ["*.cc"]},  # native CPU kernels (runtime/native.py)
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        # torch 2.13.0, the version the tests run with. The pin picks no build: PyPI's Linux
        # wheel brings several GB of CUDA libraries; the CPU build comes from PyTorch's index
        # (`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`,
        # installed first: it satisfies the pin).
        "torch": ["torch==2.13.0"],
        # huggingface_hub: `import-torch hf://OWNER/REPO/FILE` fetches through its download
        # cache, offline mode and token handling (the peers publish their weights there).
        "hub": ["huggingface_hub>=1.0"],
        # libtpu (pinned to the installed jax by jax's own extra): compile for a TPU slice on
        # any machine (`crema-jax pretrain --dry_run --topology=v5p:4x4x4`); TPU VMs need it too.
        "tpu": ["jax[tpu]"],
        # NVIDIA GPUs: jaxlib's CUDA 13 plugin with CUDA's own wheels (pinned to the installed
        # jax by jax's extra); bench/accelerator.sh installs it where jax has no GPU backend.
        "cuda": ["jax[cuda13]"],
        "clinical": CLINICAL,
        # `crema-jax prepare --runner=...`: the cache built as an Apache Beam pipeline
        # (DirectRunner, Dataflow, Flink/Spark). 2.77.0 installs beside the pinned jax, grain,
        # array-record and numpy; it needs protobuf < 7 (pip takes 6.33, which grain, orbax and
        # tensorboardX accept).
        "beam": ["apache-beam==2.77.0"],
        # Object storage for --root/--out/cache_dir URLs (fsspec's implementations).
        "gcs": ["gcsfs"],
        "s3": ["s3fs"],
        # pytest-xdist: the suite runs on two worker processes (XLA compiles single-threaded).
        # sierraecg (MIT): the sierra-ecg-tools reference decoder of Philips' XLI, which the
        # tests hold our XLI decoding to.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-learn>=1.4", "torch==2.13.0",
                 "jax[tpu]", "huggingface_hub>=1.0", "sierraecg>=0.4", *CLINICAL],
    },
    entry_points={"console_scripts": ["crema-jax=crema_jax.main:run"]},
)
