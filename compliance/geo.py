"""Where a consumer may be: candidate states and zones from an address (COMPLIANCE.md §3.2).

The area code gives one state and its zones (``compliance.numbers``). A consent record (or
the call) may add an address: its state, or failing that the state of its ZIP code's first
three digits, joins the candidate states, and every zone of that state joins the candidate
zones. Unknown or ambiguous codes add nothing; they never remove a candidate.
"""

from __future__ import annotations

from .numbers import zones_of_state

# USPS three-digit ZIP prefixes -> state, as inclusive ranges. Military (AA/AE/AP) and the
# shared Pacific prefix 969 (GU, MP, PW, FM, MH) are left out: they name no single state.
_ZIP3_RANGES: tuple[tuple[int, int, str], ...] = (
    (5, 5, "NY"), (6, 7, "PR"), (8, 8, "VI"), (9, 9, "PR"), (10, 27, "MA"), (28, 29, "RI"),
    (30, 38, "NH"), (39, 49, "ME"), (50, 54, "VT"), (55, 55, "MA"), (56, 59, "VT"),
    (60, 69, "CT"), (70, 89, "NJ"), (100, 149, "NY"), (150, 196, "PA"), (197, 199, "DE"),
    (200, 200, "DC"), (201, 201, "VA"), (202, 205, "DC"), (206, 219, "MD"), (220, 246, "VA"),
    (247, 268, "WV"), (270, 289, "NC"), (290, 299, "SC"), (300, 319, "GA"), (320, 339, "FL"),
    (341, 349, "FL"), (350, 369, "AL"), (370, 385, "TN"), (386, 397, "MS"), (398, 399, "GA"),
    (400, 427, "KY"), (430, 459, "OH"), (460, 479, "IN"), (480, 499, "MI"), (500, 528, "IA"),
    (530, 549, "WI"), (550, 567, "MN"), (569, 569, "DC"), (570, 577, "SD"), (580, 588, "ND"),
    (590, 599, "MT"), (600, 629, "IL"), (630, 658, "MO"), (660, 679, "KS"), (680, 693, "NE"),
    (700, 715, "LA"), (716, 729, "AR"), (730, 731, "OK"), (733, 733, "TX"), (734, 749, "OK"),
    (750, 799, "TX"), (800, 816, "CO"), (820, 831, "WY"), (832, 838, "ID"), (840, 847, "UT"),
    (850, 865, "AZ"), (870, 884, "NM"), (885, 885, "TX"), (889, 898, "NV"), (900, 961, "CA"),
    (967, 968, "HI"), (970, 979, "OR"), (980, 994, "WA"), (995, 999, "AK"),
)
_ZIP3: dict[int, str] = {z: st for lo, hi, st in _ZIP3_RANGES for z in range(lo, hi + 1)}
_ZIP5: dict[str, str] = {"96799": "AS"}  # American Samoa sits inside Hawaii's 967


def state_of_zip(zip_code: object) -> str | None:
    if not isinstance(zip_code, str) or len(zip_code) < 5 or not zip_code[:5].isdigit():
        return None
    return _ZIP5.get(zip_code[:5]) or _ZIP3.get(int(zip_code[:3]))


def address_state(state: object, zip_code: object) -> str | None:
    """The state an address names: its two-letter state if known, else its ZIP's state."""
    if isinstance(state, str) and len(state) == 2 and zones_of_state(state.upper()):
        return state.upper()
    return state_of_zip(zip_code)


def candidates(npa_state: str | None, npa_zones: tuple[str, ...], *extra_states: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(states, zones): the area code's, plus every extra state and all of its zones."""
    states = {npa_state} if npa_state is not None else set()
    zones = set(npa_zones)
    for st in extra_states:
        if st is not None and st not in states:
            states.add(st)
            zones.update(zones_of_state(st))
    return tuple(sorted(states)), tuple(sorted(zones))
