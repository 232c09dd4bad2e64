"""The province's bulletin lexicon as admins extend it at runtime, on top of the built-in one
(``streamer/mixer/vi_lexicon.py``) and the ``tts_lexicon`` file.

Admins' entries (term -> reading) live in Redis (``loa:lexicon``); this keeps the voice's
lexicon equal to the file's terms with theirs on top, so the next TTS broadcast or preview
reads them, without a restart. Speech runs in worker threads, so the voice's lexicon is never
changed in place: a whole new ``Lexicon`` is built and swapped in (one attribute write).
An entry is refused, naming ``term`` or ``reading``, when the expander could not match the
term or when its reading would be expanded again (it holds a term of the lexicon): a text
read back from ``POST /api/v1/tts/normalize`` must read the same.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel

from streamer.mixer.sources import TtsProvider
from streamer.mixer.vi_lexicon import (
    ABBREVIATIONS,
    ROADS,
    UNITS,
    Lexicon,
    LexiconError,
    check_spoken,
    check_term,
)

from .models import LexiconEntry
from .schemas import BadRequest
from .state import State

Source = Literal["built-in", "file", "admin"]


class LexiconRow(BaseModel):
    """One entry as ``GET /api/v1/tts/lexicon`` lists it."""

    term: str
    reading: str
    source: Source
    #: how the built-in ones match: a unit after a number, a road before one, an abbreviation
    #: (and every file or admin term) as a whole word
    kind: Literal["abbreviation", "unit", "road"] = "abbreviation"
    #: False: another source's entry for the same term is read instead
    in_use: bool = True
    added_by: str | None = None
    added: float | None = None


class ProvinceLexicon:
    """The voice's lexicon: the file's terms (as the voice was built with them) and the
    admins' on top."""

    def __init__(self, state: State, tts: TtsProvider) -> None:
        self.state = state
        self.tts = tts
        self.file: dict[str, str] = dict(tts.lexicon.terms) if tts.lexicon else {}
        self.entries: dict[str, LexiconEntry] = {}

    async def load(self) -> None:
        """The admins' entries as Redis has them (at start and on a takeover). One that no
        longer fits (e.g. the file now has a term in its reading) is still used: the file is
        the ops' word, and the admin sees the entry listed."""
        self.entries = {e.term: e for e in await self.state.lexicon.all()}
        self._swap()

    def _terms(self) -> dict[str, str]:
        return {**self.file, **{t: e.reading for t, e in self.entries.items()}}

    def _swap(self) -> None:
        terms = self._terms()
        self.tts.lexicon = Lexicon(terms) if terms else None

    def check(self, term: str, reading: str) -> tuple[str, str]:
        """The entry as it would be stored (term composed, reading stripped), or
        ``BadRequest`` naming ``term`` or ``reading``."""
        try:
            check_term(term, "term")
            reading = check_spoken(reading, "reading")
        except LexiconError as e:
            raise BadRequest(e.field, e.message) from None
        term = unicodedata.normalize("NFC", term)
        reading = unicodedata.normalize("NFC", reading)
        terms = {**self._terms(), term: reading}
        try:
            lexicon = Lexicon(terms)
        except LexiconError as e:  # too many terms
            raise BadRequest("term", e.message) from None
        again = lexicon.find(reading)
        if again is not None:
            raise BadRequest("reading", f"holds the term {again!r}, which would be read again; "
                             "write it out as it is said")
        alone = Lexicon({term: reading})
        for other, spoken in terms.items():
            if other != term and alone.find(spoken) is not None:
                raise BadRequest("term", f"is in the reading of {other!r}, which would then be "
                                 "read again")
        return term, reading

    async def put(self, term: str, reading: str, user: str,
                  now: float) -> tuple[LexiconEntry, LexiconEntry | None]:
        """The entry stored and read from now on, and the one it replaced."""
        term, reading = self.check(term, reading)
        entry = LexiconEntry(term=term, reading=reading, added_by=user, added=now)
        await self.state.lexicon.put(term, entry)
        before = self.entries.get(term)
        self.entries = {**self.entries, term: entry}
        self._swap()
        return entry, before

    async def delete(self, term: str) -> LexiconEntry | None:
        """The admin's entry removed (no longer read), or None if there was none."""
        term = unicodedata.normalize("NFC", term)
        entry = await self.state.lexicon.get(term)
        if entry is None or not await self.state.lexicon.delete(term):
            return None
        self.entries = {t: e for t, e in self.entries.items() if t != term}
        self._swap()
        return entry

    def rows(self) -> list[LexiconRow]:
        """Every entry, built-in, file and admin, each with where it comes from and whether
        it is the one read."""
        lexicon = self.tts.lexicon

        def overridden(term: str) -> bool:
            return lexicon is not None and lexicon.find(term) == term

        rows = [LexiconRow(term=t, reading=r, source="built-in", kind="road")
                for t, r in ROADS.items()]
        rows += [LexiconRow(term=t, reading=r, source="built-in", kind="unit",
                            in_use=not overridden(t)) for t, r in UNITS.items()]
        rows += [LexiconRow(term=t, reading=r, source="built-in", in_use=not overridden(t))
                 for t, r in ABBREVIATIONS.items()]
        rows += [LexiconRow(term=t, reading=r, source="file", in_use=t not in self.entries)
                 for t, r in self.file.items()]
        rows += [LexiconRow(term=e.term, reading=e.reading, source="admin", added_by=e.added_by,
                            added=e.added) for e in sorted(self.entries.values(),
                                                           key=lambda e: e.term)]
        return rows
