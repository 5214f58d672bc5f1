"""The bounds every reader holds a record to, written once. Standard library only: the commands'
flag checks (evaluate/ranges.py) import it when they answer --help."""

MIN_SECONDS = 2.0  # a shorter record is a too_short skip (every reader, every source)
# The most samples (x channels) a record is read whole with: 3.1 h of 12 leads at 500 Hz, 24 h
# of 3 leads at 256 Hz. Reading one costs ~14 bytes a sample at its peak (float64 rows, their
# float32 copy, the resampled output): ~0.9 GB here, where a 24 h 12-lead record at 500 Hz
# peaked at 12.8 GB. A longer record is a too_large skip.
MAX_SAMPLES = 2**26
# The sampling rates (Hz) a record file may state; any other, or none, is a bad_sampling_rate
# skip. The same bounds hold data.target_fs and the --fs and --target_fs flags: 1 Hz had put every
# record past its filters' Nyquist limit, 1e9 Hz had asked for 449 GiB a record.
FS_RANGE = (50, 10_000)  # whole Hz: refusals show them as written (runtime/ranges.py)
