"""The bulletin lexicon (``streamer/control/lexicon.py``): every entry listed with its source,
admins of the province adding and removing their own terms (audited), and what a text reads
as with them."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from streamer.control import auth
from streamer.control.lexicon import LexiconRow, ProvinceLexicon
from streamer.control.models import LexiconEntry
from streamer.control.schemas import Body, SpeechText
from streamer.mixer.vi_lexicon import MAX_SPOKEN_CHARS, MAX_TERM_CHARS
from streamer.mixer.vi_text import normalize_vi

from .core import API, Ctx, NotFound


class LexiconOut(BaseModel):
    entries: list[LexiconRow] = Field(description="built-in, file (tts_lexicon) and admin "
                                      "entries; an admin's term is read before a file's, a "
                                      "file's before the built-in one")


class LexiconIn(Body):
    reading: str = Field(min_length=1, max_length=MAX_SPOKEN_CHARS,
                         description="what a presenter says for the term")


class NormalizeIn(Body):
    text: SpeechText


class NormalizeOut(BaseModel):
    spoken: str = Field(description="the text as the voice is given it: numbers, dates, units "
                        "and the lexicon's terms in words")


def _province(ctx: Ctx, what: str) -> list[str]:
    """The top-level zones, after checking that the caller is admin of each: the lexicon is
    the whole province's."""
    roots = list(ctx.services.tree.roots)
    ctx.require(auth.ADMIN, roots, what)
    return roots


def _term(ctx: Ctx) -> str:
    return ctx.path("term")[:MAX_TERM_CHARS + 1]  # longer: refused by name as too long


@API.route("GET", "/api/v1/tts/lexicon", summary="The bulletin lexicon: every entry and "
           "where it comes from", tag="clips", response=LexiconOut)
async def list_lexicon(ctx: Ctx) -> LexiconOut:
    ctx.require(auth.VIEW, [], "see the lexicon")
    return LexiconOut(entries=ctx.services.lexicon.rows())


@API.route("PUT", "/api/v1/tts/lexicon/{term}", summary="Add or change a term of the "
           "province's lexicon (admin of the province; audited); read from the next text on",
           tag="clips", body=LexiconIn, response=LexiconEntry)
async def put_lexicon(ctx: Ctx) -> LexiconEntry:
    roots = _province(ctx, "change the bulletin lexicon")
    body: LexiconIn = ctx.body
    lexicon: ProvinceLexicon = ctx.services.lexicon
    entry, before = await lexicon.put(_term(ctx), body.reading, ctx.me.name, time.time())
    await ctx.audit("lexicon_put", entry.term, roots, reading=entry.reading,
                    previous=before.reading if before else None)
    ctx.services.events.publish("lexicon", {"action": "put", "term": entry.term}, roots)
    return entry


@API.route("DELETE", "/api/v1/tts/lexicon/{term}", summary="Remove an admin's term from the "
           "lexicon (admin of the province; audited); returns it", tag="clips",
           response=LexiconEntry)
async def delete_lexicon(ctx: Ctx) -> LexiconEntry:
    roots = _province(ctx, "change the bulletin lexicon")
    entry: LexiconEntry | None = await ctx.services.lexicon.delete(_term(ctx))
    if entry is None:
        raise NotFound(f"admin's lexicon entry {_term(ctx)!r}", "term")
    await ctx.audit("lexicon_delete", entry.term, roots, reading=entry.reading)
    ctx.services.events.publish("lexicon", {"action": "delete", "term": entry.term}, roots)
    return entry


@API.route("POST", "/api/v1/tts/normalize", summary="What a text reads as: the words the voice "
           "is given (numbers, dates, units, the lexicon's terms)", tag="clips",
           body=NormalizeIn, response=NormalizeOut)
async def normalize_text(ctx: Ctx) -> NormalizeOut:
    body: NormalizeIn = ctx.body
    return NormalizeOut(spoken=normalize_vi(body.text, ctx.services.tts.lexicon))
