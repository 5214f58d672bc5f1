"""Sample records for manifests built in the evaluation tests."""
import hashlib


def distinct_heads(folder, count: int) -> list:
    """The first `count` WFDB headers of `folder` (sorted) whose .mat signals differ: a
    byte-identical copy would be merged as a duplicate by the evaluation commands."""
    heads, seen = [], set()
    for head in sorted(folder.glob("*.hea")):
        digest = hashlib.sha256(head.with_suffix(".mat").read_bytes()).hexdigest()
        if digest not in seen and len(heads) < count:
            seen.add(digest)
            heads.append(head)
    return heads
