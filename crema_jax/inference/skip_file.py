"""The side file naming every record embed or predict skipped: OUT.skipped.csv beside the
output (Y.skipped.csv for Y.npy, probs.skipped.csv for probs.csv), written with the output when
at least one record was skipped. Columns: `path` (absolute, as predict's `path` column and
embed's Y.paths.txt write it), `reason` (a skip reason: data/reading/ecg.py RecordError) and
`message` (what was wrong), one row per skip in the order of the records given; text as
embed.one_line_name writes it (one line of valid UTF-8)."""
from __future__ import annotations

import csv
import os

COLUMNS = ("path", "reason", "message")


def path_of(out_path: str) -> str:
    """OUT.skipped.csv: the output's name without its extension, then ".skipped.csv"."""
    return os.path.splitext(out_path)[0] + ".skipped.csv"


def writer(events, one_line):
    """write(tmp) for files.write_atomic(_group): the skips (reason, path, message) as CSV,
    each text through `one_line` (embed.one_line_name)."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for reason, path, message in events:
                out.writerow([one_line(os.path.abspath(path)), reason, one_line(message)])
    return write
