"""The canonical 12 ECG leads and the mapping of header lead names onto them.

Every array in crema_jax holds leads in the order of `LEADS` (index 0..11). Header names are
matched after normalisation (case-folded; spaces, underscores and a leading word "lead" removed),
so "I", "lead I", "LEAD_I", "i" and "DI" (Brazilian/CODE-15 naming) all mean lead I.

Deliberately NOT mapped (the channel is dropped, and a limb lead may then be derived):
- inverted leads such as "-aVR" (Cabrera display): silently flipping a sign would hide a
  mislabelled record;
- modified leads such as "MLII" or "MV1" (Holter placements): their electrodes sit elsewhere, so
  their waveforms differ from the standard lead;
- vectorcardiographic / Frank leads (vx, vy, vz, X, Y, Z) and anything else unknown.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}
NUM_LEADS = len(LEADS)

# Normalised alias -> canonical lead. Keys are already normalised by `_normalise`.
_ALIASES = {
    "i": "I", "di": "I",
    "ii": "II", "dii": "II",
    "iii": "III", "diii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    # Some European devices name the chest leads C1..C6.
    **{f"v{k}": f"V{k}" for k in range(1, 7)},
    **{f"c{k}": f"V{k}" for k in range(1, 7)},
}


def _normalise(name: str) -> str:
    key = name.strip().casefold().replace(" ", "").replace("_", "")
    if key.startswith("lead") and len(key) > 4:
        key = key[4:]
    return key


def lead_index(name: str) -> int | None:
    """Canonical index (0..11) of a header lead name, or None when it is not a standard lead."""
    canonical = _ALIASES.get(_normalise(name))
    return None if canonical is None else LEAD_INDEX[canonical]


def check_lead_names(names: Sequence[str], field: str, *, expected: str = "names") -> None:
    """ValueError starting `field: ` unless `names` are one or more canonical lead names
    (`LEADS`, spelled exactly), each once. `expected` says what else the field accepts in the
    message (e.g. "one of [...] or '+'-joined names"). The order is the caller's."""
    names = tuple(names)
    unknown = [name for name in names if name not in LEADS]
    if unknown or not names:
        raise ValueError(f"{field}: {f'unknown leads {unknown}' if unknown else 'no leads'}; "
                         f"expected {expected} from {LEADS}")
    repeated = sorted({name for name in names if names.count(name) > 1}, key=LEAD_INDEX.get)
    if repeated:  # ("I", "I") had fed one row twice, under two lead embeddings
        raise ValueError(f"{field}: {'+'.join(repeated)} named twice; expected distinct leads")


def derive_limb_leads(signal: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Fills absent limb leads from the present ones (Einthoven and Goldberger identities).

    Any two of I, II, III give the third (III = II - I); I and II then give
    aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2. Only absent rows are written.

    Returns (signal, present, number_of_leads_derived); inputs are not modified.
    """
    sig = signal.copy()
    pres = present.copy()
    n = 0
    i, ii, iii = 0, 1, 2
    if not pres[i] and pres[ii] and pres[iii]:
        sig[i] = sig[ii] - sig[iii]
        pres[i], n = True, n + 1
    if not pres[ii] and pres[i] and pres[iii]:
        sig[ii] = sig[i] + sig[iii]
        pres[ii], n = True, n + 1
    if not (pres[i] and pres[ii]):
        return sig, pres, n
    lead_i, lead_ii = sig[i], sig[ii]
    formulas = {
        2: lambda: lead_ii - lead_i,
        3: lambda: -(lead_i + lead_ii) / 2,
        4: lambda: lead_i - lead_ii / 2,
        5: lambda: lead_ii - lead_i / 2,
    }
    for row, formula in formulas.items():
        if not pres[row]:
            sig[row] = formula()
            pres[row], n = True, n + 1
    return sig, pres, n
