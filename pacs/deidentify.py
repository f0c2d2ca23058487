"""De-identification on export: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile (E.1), with UIDs remapped consistently (docs/deidentification.md).

Used by WADO-RS retrieves with ``?deidentify=basic`` (dicomweb/wado.py) and by AI
subscriptions with ``"deidentify": true`` (ai_hooks/push.py). Stored objects are never
changed: each exported copy is de-identified on the way out.

**Which library, and why.** The action of every attribute comes from Table E.1-1 as
shipped by ``dicom-anonymizer`` (module ``dicomanonymizer``, Kitware, BSD): it carries
the table of the standard itself, one Python list per action code (D, Z, X, U, Z/D, X/Z,
X/D, X/Z/D, X/Z/U*) and one module per edition (we use ``dicomfields_2026c``), and its
per-VR dummy values for D and Z; it depends only on pydicom (3.x works). The two others
looked at: ``dicognito`` pseudonymises (fake names and addresses, shifted dates, every
UID) rather than applying the profile's table, and keeps private attributes; ``deid``
works from its own heuristic recipe (e.g. ``REMOVE endswith:ID``), not Table E.1-1, and
pulls in matplotlib. ``dicom-anonymizer`` applies its table to top-level attributes only
and replaces UIDs with random ones held in a process-wide dictionary, so the walk below
is ours: the table applies at every nesting level (PS3.15 E.1.1: attributes nested in
sequences are de-identified too) and every UID goes through :class:`UidRemapper`.

**What happens** (PS3.15 E.1.1, Table E.1-1):

* X: removed; Z (and X/Z): emptied (a sequence loses its items); D (and Z/D, X/D,
  X/Z/D): the library's dummy value for the VR, a sequence has all it contains replaced;
  U (and X/Z/U*): every UID remapped, a sequence keeps its items and is walked;
* private attributes (odd groups) are removed (Table E.1-1 "Private attributes": X);
* any other UID that is not registered under the DICOM root ``1.2.840.10008`` and is not
  a class or coding-scheme UID is remapped too, so a UID attribute newer than the table
  cannot carry an original UID out;
* Patient ID and Patient's Name get the same keyed pseudonym of the original Patient ID
  (a non-empty dummy value, E.1.1 "D"), so two exports of one patient stay one patient;
* Patient Identity Removed (0012,0062) ``YES``, De-identification Method (0012,0063) and
  De-identification Method Code Sequence (0012,0064) with CID 7050 ``(113100, DCM, "Basic
  Application Confidentiality Profile")`` are added (PS3.15 E.1.1 item 4; PS3.3 C.12.1.1.6),
  Longitudinal Temporal Information Modified (0028,0303) ``REMOVED``;
* Pixel Data is untouched (no Clean Pixel Data Option: burned-in text stays);
* the File Meta Information is rebuilt (PS3.10 7.1): Media Storage SOP Instance UID =
  the new SOP Instance UID, the transfer syntax of the input, this archive's
  implementation UID, no source or sending AE titles.

**UIDs** (PS3.15 E.1.1 item 6, "U": internally consistent within a set of instances):
``2.25.<decimal>`` of a UUID (PS3.5 B.2) made from HMAC-SHA256(original UID) under a
per-archive secret: the same original maps to the same UID in every instance, series,
export and server process, and references in sequences (Referenced SOP Instance UID,
Frame of Reference UID, ...) get the value their target got. The secret is the
``deidentify_secret`` setting, else a 256-bit key created on first use and kept in the
index (``schema_meta``), like the AI token key.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from dicomanonymizer import simpledicomanonymizer as library
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import keyword_for_tag
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from .errors import InvalidQuery
from .index.keys import stored_key
from .retrieve import RetrieveFailure

if TYPE_CHECKING:
    from .archive import Archive

log = logging.getLogger(__name__)

#: The edition of Table E.1-1 used (a module of ``dicomanonymizer.dicom_anonymization_databases``).
TABLE_EDITION = "dicomfields_2026c"
#: The ``deidentify`` query parameter of a retrieve, and the profiles it may name.
PARAMETER = "deidentify"
PROFILES = ("basic",)
#: De-identification Method (0012,0063), LO (at most 64 characters).
METHOD = "DICOM PS3.15 E.1 Basic Application Confidentiality Profile"
#: CID 7050 code of the profile (PS3.16), for De-identification Method Code Sequence.
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
KEY_NAME = "deidentify_key"
_DICOM_ROOT = "1.2.840.10008."
#: UI attributes naming registered things (coding schemes, context groups), never instances.
_REGISTRY_UIDS = frozenset({"CodingSchemeUID", "ContextUID", "MappingResourceUID",
                            "ContextGroupExtensionCreatorUID", "TransferSyntaxUID"})
_PSEUDONYM_TAGS = (0x00100010, 0x00100020)  # Patient's Name, Patient ID


class DeidentificationFailed(RetrieveFailure):
    """An object could not be read or written while de-identifying it: that instance
    cannot be sent (406 over DICOMweb, a failed sub-operation over DIMSE)."""


# -- the table ---------------------------------------------------------------------------
#: Action code of each list of the library (PS3.15 Table E.1-1), reduced to what we do:
#: the library's choice for the compound codes (Z/D → D, X/Z → Z, X/D → D, X/Z/D → D).
_CATEGORY_ACTIONS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "D",
                     "X_Z_TAGS": "Z", "X_D_TAGS": "D", "X_Z_D_TAGS": "D", "X_Z_U_STAR_TAGS": "U"}


def _load_table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """(tag → action, repeating-group masks) from the library's Table E.1-1."""
    lists = dicom_anonymization_database_selector(TABLE_EDITION)
    single: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTIONS.items():
        for entry in lists[category]:
            if len(entry) == 2:
                single[(entry[0] << 16) | entry[1]] = action
            else:  # (group, element, group mask, element mask): 50xx curves, 60xx overlays
                masked.append((*entry, action))
    return single, masked


_TABLE, _MASKED = _load_table()


def action_of(tag: BaseTag) -> str:
    """The Table E.1-1 action of ``tag`` (D, Z, X or U), or K (keep) when it is not listed."""
    found = _TABLE.get(int(tag))
    if found is not None:
        return found
    for group, element, group_mask, element_mask, action in _MASKED:
        if tag.group & group_mask == group & group_mask and tag.element & element_mask == element & element_mask:
            return action
    return "K"


# -- UIDs --------------------------------------------------------------------------------
class UidRemapper:
    """Original UID → ``2.25.<decimal UUID>`` derived from HMAC-SHA256 under a secret:
    deterministic, so consistent across instances, calls and processes (PS3.15 E.1.1 "U")."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")
        self._secret = secret

    def digest(self, text: str) -> bytes:
        return hmac.new(self._secret, text.encode("utf-8"), hashlib.sha256).digest()

    def __call__(self, uid: str) -> str:
        value = int.from_bytes(self.digest("uid:" + uid.strip("\x00 "))[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # UUID version 8, custom (RFC 9562 5.8)
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
        return f"2.25.{value}"  # PS3.5 B.2: at most 5 + 39 digits

    def pseudonym(self, patient_id: str) -> str:
        """A keyed pseudonym of a Patient ID (the same for every export of that patient)."""
        return "ANON" + self.digest("patient:" + patient_id.strip()).hex()[:16].upper()


def _is_registered(elem: DataElement, value: str) -> bool:
    """A well-known UID (DICOM root) or a class / coding-scheme UID: never an instance's."""
    keyword = keyword_for_tag(elem.tag) or ""
    return value.startswith(_DICOM_ROOT) or keyword.endswith("ClassUID") or keyword in _REGISTRY_UIDS


def _remap_element(elem: DataElement, remap: Callable[[str], str]) -> None:
    """Every value of a UI element remapped; empty and registered values stay."""
    values = list(elem.value) if elem.VM > 1 else [elem.value]
    mapped = [v if not v or _is_registered(elem, str(v)) else remap(str(v)) for v in values]
    elem.value = mapped if elem.VM > 1 else mapped[0]


# -- the walk ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Walk:
    remap: UidRemapper
    pseudonym: str


def _dummy(ds: Dataset, elem: DataElement, action: str) -> None:
    """D or Z on a non-sequence, non-UID element with the library's per-VR values; an
    element of a VR the library has no value for is removed instead."""
    try:
        (library.replace_element if action == "D" else library.empty_element)(elem)
    except NotImplementedError:
        del ds[elem.tag]


def _apply(ds: Dataset, elem: DataElement, action: str, walk: _Walk) -> None:
    """One element's action (module doc), recursing into sequences."""
    if action == "X":
        del ds[elem.tag]
    elif elem.VR == "SQ":
        if action == "Z":
            elem.value = Sequence()
        else:
            for item in elem.value:
                _clean(item, walk, replace_all=action == "D")
    elif int(elem.tag) in _PSEUDONYM_TAGS and action in ("D", "Z"):
        elem.value = walk.pseudonym
    elif elem.VR == "UI":
        if action == "Z":
            elem.value = ""
        else:  # U, D and K alike: instance UIDs remapped, registered ones kept
            _remap_element(elem, walk.remap)
    elif action in ("D", "Z"):
        _dummy(ds, elem, action)


def _clean(ds: Dataset, walk: _Walk, replace_all: bool = False) -> None:
    """Every element of ``ds`` (and of its sequences) through Table E.1-1; private
    elements and group lengths removed. ``replace_all``: inside a sequence whose action
    is D, where everything not removed is replaced."""
    for tag in list(ds.keys()):
        if tag.is_private or tag.element == 0:
            del ds[tag]
            continue
        action = action_of(tag)
        if replace_all and action != "X":
            action = "D"
        _apply(ds, ds[tag], action, walk)


def _mark(ds: Dataset) -> None:
    """The attributes that say what was done (PS3.15 E.1.1 item 4; PS3.3 C.12.1.1.6)."""
    ds.PatientIdentityRemoved = "YES"
    methods = [str(m) for m in _as_list(ds.get("DeidentificationMethod")) if m]
    ds.DeidentificationMethod = [*methods, METHOD] if methods else METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    codes = ds.get("DeidentificationMethodCodeSequence") or Sequence()
    codes.append(code)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "REMOVED"


def _as_list(value: object) -> list[object]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]


def _file_meta(ds: Dataset, transfer_syntax: str | None) -> FileMetaDataset:
    """A new File Meta Information (PS3.10 7.1) naming the de-identified instance."""
    from .dimse.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax:
        meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def deidentify(ds: Dataset, remap: UidRemapper) -> Dataset:
    """``ds`` de-identified in place by the Basic Application Level Confidentiality
    Profile (PS3.15 E.1; module doc), UIDs through ``remap``; returned for chaining.
    A File Meta Information, when present, is rebuilt for the new SOP Instance UID."""
    walk = _Walk(remap, remap.pseudonym(str(ds.get("PatientID", "") or "")))
    _clean(ds, walk)
    _mark(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        ds.file_meta = _file_meta(ds, str(meta.get("TransferSyntaxUID", "")) or None)
    log.debug("de-identified one instance (%d elements left)", len(ds))
    return ds


# -- Part 10 bytes ------------------------------------------------------------------------
def deidentify_part10(data: bytes, remap: UidRemapper) -> bytes:
    """A Part 10 object (PS3.10 7) de-identified: same transfer syntax, pixel data as it was."""
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DeidentificationFailed(f"object unreadable: {type(exc).__name__}") from exc
    deidentify(ds, remap)
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=True)
    except Exception as exc:
        raise DeidentificationFailed(f"cannot write the de-identified object: {type(exc).__name__}") from exc
    return out.getvalue()


def _strip_file_meta(part10: bytes) -> bytes:
    """The dataset bytes after preamble, ``DICM`` and the group length-led file meta."""
    if part10[128:132] != b"DICM" or part10[132:138] != b"\x02\x00\x00\x00UL":
        raise DeidentificationFailed("unexpected Part 10 header")
    return part10[144 + int.from_bytes(part10[140:144], "little"):]


def deidentify_dataset_bytes(data: bytes, transfer_syntax: str, remap: UidRemapper) -> bytes:
    """Dataset bytes (no file meta) encoded in ``transfer_syntax``, de-identified, in the
    same syntax: what a C-STORE carries (PS3.7 6.3.1)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=False)
    return _strip_file_meta(deidentify_part10(head.parent.getvalue() + data, remap))  # type: ignore[attr-defined]


# -- the secret and the request -------------------------------------------------------------
def remapper_for(archive: Archive) -> UidRemapper:
    """The UID remapper of this archive (blocking: may read or create the stored key)."""
    configured = archive.settings.deidentify_secret
    return UidRemapper(configured.encode("utf-8") if configured else stored_key(archive.db, KEY_NAME))


def requested(values: list[str]) -> bool:
    """Whether the ``deidentify`` query parameter values of a request ask for de-identification:
    none → False, one ``basic`` → True, anything else → 400 (InvalidQuery)."""
    if not values:
        return False
    if len(values) != 1 or values[0] not in PROFILES:
        raise InvalidQuery(f"{PARAMETER} must be given once, as one of: {', '.join(PROFILES)} "
                           "(PS3.15 E.1 Basic Application Level Confidentiality Profile)")
    return True
