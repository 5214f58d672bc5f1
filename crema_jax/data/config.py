"""`config.data`: everything the input pipeline needs, each field with why it has its default."""
from __future__ import annotations

import ml_collections

from crema_jax.data import presets
from crema_jax.data.reading.leads import LEADS


def default_data_config() -> ml_collections.ConfigDict:
    placeholder = ml_collections.config_dict.placeholder
    cfg = ml_collections.ConfigDict()

    # --- where the records come from
    cfg.layout = "wfdb_folder"   # Key of index/registry.LAYOUTS; any folder of .hea files.
    cfg.root = ""                # Dataset folder for the layout (unused when cache_dir is set).
    cfg.layout_options = ml_collections.ConfigDict()  # Extra keyword arguments of the layout fn.
    # A `crema-jax prepare` output folder. When set it replaces root/layout: decoding cached
    # int16 is ~50x cheaper than reading + filtering + resampling WFDB in every epoch.
    cfg.cache_dir = ""
    # > 0: this many seeded synthetic 12-lead ECGs (data/synthetic.py, 10 s each) replace the
    # dataset (smoke tests, benchmarks, dry runs on a machine without data); crops, masks, views
    # and iterator checkpoints are the real pipeline's.
    cfg.synthetic_records = 0
    cfg.split = "train"          # Records of this split ("train"/"val"/"test"; "" = all records).
    cfg.derive_limb_leads = True  # Rebuild absent limb leads from two present ones (Einthoven).

    # --- the data path: `presets.apply(cfg, NAME)` sets every field of this block (and the
    # geometry and evaluation fields below) to "crema" (ours), "stmem" or "ecgfounder" (the
    # peers' own paths; see data/presets.py for each step). These defaults are "crema".
    cfg.preset = "crema"
    # 0 = each record is one example; 10 = non-overlapping 10 s windows at the record's own rate
    # (a trailing remainder dropped; records shorter than one window skipped), ST-MEM's examples.
    cfg.window_seconds = 0.0
    cfg.resample = "polyphase"   # "polyphase" (scipy resample_poly) | "fft" (scipy resample).
    # NaN samples: "interpolate" short runs (a step would make the filters ring) | "zero"
    # (ECGFounder) | "drop_window" (ST-MEM: a window holding any NaN is skipped).
    cfg.nan_policy = "interpolate"
    # A constant lead (e.g. all zeros: a disconnected electrode): "absent" = a zero row marked
    # absent, left out of statistics and pooling (ours) | "keep" = fed as recorded (the peers).
    cfg.flat_leads = "absent"

    # --- signal geometry (ST-MEM's tokenisation, so ST-MEM checkpoints fit unchanged)
    cfg.target_fs = 250.0        # ST-MEM trains at 250 Hz; 75-sample patches are then 0.3 s.
    cfg.crop_samples = 2250      # 9 s crops: leaves room for random shifts inside 10 s records.
    cfg.patch_size = 75          # -> 30 patches per lead, about one beat each at 60-100 bpm.
    cfg.leads = LEADS            # Rows to feed, in this order; e.g. ("I",) or the six limb leads.
    # 0.67-40 Hz zero-phase Butterworth + one z-score per record (presets.py, "crema");
    # signal/preprocess.py documents each field; None = no preprocessing at all.
    cfg.preprocess = presets.preprocessing("crema")

    # --- pretraining views
    # ST-MEM's mask: 75% of patches hidden, the same count (7 visible of 30) in every lead.
    cfg.mask = ml_collections.ConfigDict(dict(name="random_per_lead", ratio=0.75))
    # CREMA's contrastive term needs two views of each ECG; set 1 for plain MAE / ST-MEM to halve
    # the input bandwidth.
    cfg.num_views = 2
    # False: both views share one crop and differ only by mask (and augmentations), CREMA's
    # default. True: each view draws its own crop offset (a time-shift augmentation, no wrap).
    cfg.independent_view_crops = False
    cfg.augment = ml_collections.ConfigDict(dict(
        # Applied in this order, independently per view; empty = off (the default: masks alone
        # already make the views differ, and augmentations are a documented ablation).
        names=(),
        amplitude_scale=dict(prob=0.5, low=0.8, high=1.2),   # +-20% gain differences.
        baseline_wander=dict(prob=0.5, max_amplitude=0.2, max_freq_hz=0.5, num_components=2),
        gaussian_noise=dict(prob=0.5, std=0.05),             # ~5% of a unit-variance ECG.
        time_shift=dict(prob=0.5, max_shift_s=0.5),          # Up to half a beat.
        lead_drop=dict(prob=0.5, drop_prob=0.25),            # Dropped leads get patch_valid False.
    ))

    # --- evaluation
    # Crops per record, placed by batch.eval_crop_starts (the one crop policy of every command):
    # 3 = ST-MEM's crops, at 0/125/250 of a 10 s record at 250 Hz.
    cfg.eval_num_crops = 3
    # How crops' outputs become one per example: "embedding" (the probe averages the crops'
    # features, finetune their logits: before the nonlinearity) | "probability" (ST-MEM: each
    # crop's sigmoid/softmax probabilities, averaged).
    cfg.eval_crop_average = "embedding"

    # --- batching and workers
    # ECGs per batch in this process. Pretraining derives it from config.train.global_batch_size
    # and the process count (leave it unset there); evaluation commands set it from --batch_size.
    cfg.batch_size = placeholder(int)
    cfg.num_epochs = placeholder(int)  # None = endless pretraining stream; 1 = one pass.
    cfg.seed = 0                 # Shuffle order, crops, masks and augmentations all derive from it.
    # Worker processes for mp_prefetch; 0 = in-process (tests, debugging, exact skip counts).
    # At most 256, as data.read_threads (runtime/ranges.py's MAX_READERS).
    cfg.num_workers = 0
    cfg.per_worker_buffer_size = 2  # Batches buffered per worker: enough to hide jitter.
    # Threads per process reading records; 0 for the cache (in page cache, GIL-bound decode).
    # embed/probe/finetune/predict read raw records on 2 in-process (inference/backbones.py).
    cfg.read_threads = 0
    cfg.prefetch_buffer_size = 64   # Elements read ahead per process when read_threads > 0.
    # Both buffers hold batch-sized chunks; pretrain refuses buffers whose batches would not fit
    # in the machine's memory (train/layout.read_ahead).
    # Keep every raw-WFDB record in memory once read and preprocessed (each worker its own
    # copy): for datasets that fit, such as the bundled records (36 x 12 x 2500 float32, 4 MB).
    cfg.keep_in_memory = False

    # --- bad records
    cfg.strict = False           # True: the first bad record raises, naming the file and problem.
    cfg.skip_log_dir = ""        # Worker processes append skip events here (SkipStats.from_log_dir)
    # A damaged cache (a shard failing its checksum, truncated or missing; cache/source.py) stops
    # the run, naming the file: a damaged record is never trained on. True: its records are
    # skipped instead and counted as `damaged_cache_record` (e.g. to finish a run, then rebuild).
    cfg.skip_damaged_cache_records = False
    return cfg
