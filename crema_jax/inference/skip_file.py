"""The side file naming every record embed or predict skipped: OUT.skipped.csv beside the
output (Y.skipped.csv for Y.npy, probs.skipped.csv for probs.csv), written with the output when
at least one record was skipped. Columns: `path`, the skipped record as the output's rows name
theirs (its absolute path, as predict's `path` column and embed's Y.paths.txt write it: the
join key; for an array input its row number), `reason` (a skip reason: data/reading/ecg.py
RecordError), `message` (what was wrong) and `file`, the file that failed (absolute: the
record's header or signal file, an export file; "" for an array), one row per skip in the order
of the records given; text as embed.one_line_name writes it (one line of valid UTF-8)."""
from __future__ import annotations

import csv
import os

COLUMNS = ("path", "reason", "message", "file")


def path_of(out_path: str) -> str:
    """OUT.skipped.csv: the output's name without its extension, then ".skipped.csv"."""
    return os.path.splitext(out_path)[0] + ".skipped.csv"


def writer(events, records, one_line):
    """write(tmp) for files.write_atomic(_group): the skips (position of the record in
    `records`, reason, failing file, message; embed's "skips") as CSV, each text through
    `one_line` (embed.one_line_name); `records` None: an array's, named by row number."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for position, reason, path, message in events:
                record = (str(position) if records is None
                          else one_line(os.path.abspath(records[position])))
                out.writerow([record, reason, one_line(message),
                              one_line(os.path.abspath(path)) if path else ""])
    return write
