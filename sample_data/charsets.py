"""Patients, including names in several character repertoires.

Each name is stored with the Specific Character Set (0008,0005) that encodes it
(PS3.3 C.12.1.1.2, PS3.5 6.1 and Annex H/I/J examples for Japanese, Korean and
Unicode). Person Name values follow PS3.5 6.2.1: up to three component groups
(alphabetic ``=`` ideographic ``=`` phonetic), components separated by ``^``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .determinism import rng_for

Charset = str | tuple[str, ...]


@dataclass(frozen=True)
class PatientInfo:
    """Patient module values (PS3.3 C.7.1.1) plus the character set that encodes them.

    ``charset`` is the (0008,0005) value: ``""`` for the default repertoire (ISO-IR 6),
    a single term such as ``"ISO_IR 192"``, or a tuple of ISO 2022 terms such as
    ``("ISO 2022 IR 6", "ISO 2022 IR 87")``.
    """

    patient_id: str
    name: str
    birth_date: str
    sex: str
    charset: Charset = ""

    def charset_value(self) -> str | list[str] | None:
        """The value to store in (0008,0005), or ``None`` when it should be omitted."""
        if isinstance(self.charset, tuple):
            return list(self.charset) if len(self.charset) > 1 else self.charset[0]
        return self.charset or None


@dataclass(frozen=True)
class Locale:
    """Localised study texts written in the patient's character set."""

    referring_physician: str
    institution: str
    station: str


@dataclass(frozen=True)
class _Entry:
    key: str
    name: str
    sex: str
    birth_date: str
    charset: Charset
    locale: Locale


_ENTRIES: tuple[_Entry, ...] = (
    _Entry("latin1", "Müller^Jürgen", "M", "19580412", "ISO_IR 100",
           Locale("Schäfer^Käthe^^Dr.", "Universitätsklinikum Nürnberg", "CT-SÜD-01")),
    _Entry("japanese", "Yamada^Tarou=山田^太郎=やまだ^たろう", "M", "19700305",
           ("ISO 2022 IR 6", "ISO 2022 IR 87"),
           Locale("Suzuki^Hanako=鈴木^花子=すずき^はなこ", "東京中央病院", "MR3T-01")),
    _Entry("chinese", "Wang^XiaoMing=王^小明", "M", "19851122", "ISO_IR 192",
           Locale("李^娜", "北京协和医院", "DR-02")),
    _Entry("cyrillic", "Иванова^Анна^Сергеевна", "F", "19920617", "ISO_IR 144",
           Locale("Петров^Михаил", "Городская больница №1", "УЗИ-3")),
    _Entry("greek", "Παπαδοπούλου^Ελένη", "F", "19671009", "ISO_IR 192",
           Locale("Γεωργίου^Νίκος", "Γενικό Νοσοκομείο Αθηνών", "CT-A")),
    _Entry("arabic", "الحسيني^فاطمة", "F", "19790128", "ISO_IR 192",
           Locale("المصري^أحمد", "مستشفى القاهرة", "CT-2")),
    _Entry("greek8859", "Διονυσίου^Δημήτρης", "M", "19640221", "ISO_IR 126",
           Locale("Αλεξίου^Σοφία", "Πανεπιστημιακό Νοσοκομείο", "CT-B")),
)

_ASCII_NAMES: tuple[tuple[str, str], ...] = (
    ("Doe^John", "M"), ("Smith^Emily^Rose", "F"), ("Okafor^Chinedu", "M"),
    ("Garcia^Lucia", "F"), ("Nguyen^Minh", "M"), ("Johansson^Ingrid", "F"),
    ("Kowalski^Piotr", "M"), ("Haddad^Layla", "F"),
)

#: Keys of the international patients, in catalogue order.
INTERNATIONAL_KEYS: tuple[str, ...] = tuple(e.key for e in _ENTRIES)


def _patient_id(seed: int, label: str) -> str:
    """A medical-record-number-like ID, stable for ``(seed, label)``."""
    return f"SD{int(rng_for(seed, 'patient-id', label).integers(1_000_000, 9_999_999))}"


def international_patient(key: str, seed: int = 0) -> PatientInfo:
    """The catalogue patient ``key`` (see :data:`INTERNATIONAL_KEYS`) with a seeded ID."""
    entry = _entry(key)
    return PatientInfo(_patient_id(seed, key), entry.name, entry.birth_date, entry.sex, entry.charset)


def locale_for(key: str) -> Locale:
    """Localised referring physician, institution and station for catalogue patient ``key``."""
    return _entry(key).locale


def _entry(key: str) -> _Entry:
    for entry in _ENTRIES:
        if entry.key == key:
            return entry
    raise KeyError(f"unknown patient key {key!r}; expected one of {INTERNATIONAL_KEYS}")


def default_patient(seed: int = 0) -> PatientInfo:
    """An ASCII-named patient chosen and dated by ``seed`` (no Specific Character Set)."""
    rng = rng_for(seed, "default-patient")
    name, sex = _ASCII_NAMES[int(rng.integers(len(_ASCII_NAMES)))]
    birth = f"{int(rng.integers(1940, 2005))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return PatientInfo(_patient_id(seed, "default"), name, birth, sex, "")


DEFAULT_LOCALE = Locale("Adams^Grace^^Dr.", "Riverside General Hospital", "CT01")
