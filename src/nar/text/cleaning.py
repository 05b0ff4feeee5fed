"""Caption cleaning before a text encoder reads the captions: ``none`` (as written) or ``official``.

``official`` gives ordinary captions what the official text-to-image code gives them: NAR-images encodes every
training caption and every sampling prompt through LlamaGen's ``language/t5.py`` ``T5Embedder``, whose
``text_preprocessing`` (on by default) runs its ``clean_caption`` twice (DeepFloyd IF's / PixArt's recipe). In
short: percent-decoding (a ``+`` reads as a space), lower case, no URLs, HTML tags or entities, @mentions, CJK
ideographs, IP addresses, file names, long numbers, product codes, "free shipping"/"download" spam,
bracket-like punctuation or runs of dots; dashes and quotes in one form; one space between words.

Written here with the standard library alone (the official uses ``ftfy`` and ``beautifulsoup4``):

- HTML to text: the standard library's ``html.parser`` (the parser BeautifulSoup's ``html.parser`` mode
  drives), keeping text and CDATA, dropping tags, comments, declarations and ``<script>``/``<style>`` bodies.
- ``ftfy.fix_text``: its fixes that need no guessing are here (entities decoded until none is left, where the
  text has no ``<``; C1 control characters read as Windows-1252; Latin ligatures; full-width forms; curly
  quotes; line breaks; terminal escapes; control characters; NFC); its mojibake repair is not (``cafÃ©`` stays
  ``cafÃ©``), nor its decoding of upper-cased entity names (``&EACUTE;``).
- Two passes, as the official runs: a caption escaped deeper than that (``%2525…``) may still change in a third,
  as it would there.
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata
import urllib.parse
from collections.abc import Sequence
from html.parser import HTMLParser

CLEANINGS = ("none", "official")
PASSES = 2  # the official's count; a pass undoes one level of percent-escaping

# -- the parts of a pass, in the order they run -------------------------------------------------------------------

# A URL: a scheme (http:, https:, then www: in a second sweep) or a dotted name on one of these endings.
_URL_ENDINGS = ("com", "co", "ru", "net", "org", "edu", "gov", "it")
_DOTTED_NAME = r"[a-zA-Z0-9.\-]+\.(?:" + "|".join(_URL_ENDINGS) + r")[\w/-]*\b/?(?!@)"
_URLS = [re.compile(r"\b(?:" + scheme + r":(?:/{1,3}|[a-zA-Z0-9%])|" + _DOTTED_NAME + ")")
         for scheme in ("https?", "www")]
_MENTION = re.compile(r"@\w+")
# CJK strokes, enclosed letters, compatibility forms, Extension A, Yijing symbols and the unified ideographs:
# one run of code points (kana and Hangul are kept)
_CJK = re.compile("[\u31c0-\u9fff]+")
_DASH_CHARS = ("\u002d\u058a\u05be\u1400\u1806" + "".join(map(chr, range(0x2010, 0x2016)))
               + "\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d")
_DASHES = re.compile("[" + re.escape(_DASH_CHARS) + "]+")
_TO_DOUBLE_QUOTE = re.compile("[`\u00b4\u00ab\u00bb\u201c\u201d\u00a8]")
_TO_SINGLE_QUOTE = re.compile("[\u2018\u2019]")
_FILE_TYPES = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"

# (pattern, replacement) applied in turn, between the HTML step and the dash/underscore check
_MIDDLE = [(re.compile(p), r) for p, r in (
    (r"&quot;?", ""),  # entities left over from doubly escaped text
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # a trailing article id
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""),  # "#12"
    (r"#\d{5,}\b", ""),  # "#12345"
    (r"\b\d{6,}\b", ""),  # "123456"
    (r"\S+\.(?:" + _FILE_TYPES + ")", ""),  # file names
    (r"[\"']{2,}", '"'),
    (r"\.{2,}", " "),
    (r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+", " "),  # bracket-like and decorative punctuation
    (r"\s+\.\s+", " "),  # a lone dot
)]
_JOINERS = re.compile(r"[-_]")  # more than three: words-joined-like-this become words

# after the text fixes: product codes, shop spam, sizes, then spacing and the ends of the caption
_LATE = [(re.compile(p), r) for p, r in (
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b(?:" + _FILE_TYPES + r")(\simages?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a
    (r"\b\d+\.?\d*[x\u0445\u00d7]\d+\.?\d*\b", ""),  # 1920x1080 (Latin x, Cyrillic kha, the times sign)
    (r"\b\s+:\s+", ": "),
    (r"(\D[,./])\b", r"\1 "),  # a space after punctuation glued to the next word
    (r"\s+", " "),
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),  # one pair of enclosing quotes
    (r"^['_,\-:;]", ""),
    (r"['_,\-:+]$", ""),
    (r"^\.\S+$", ""),  # nothing but ".something"
)]


class _TextOnly(HTMLParser):
    """The text of an HTML fragment: tags, comments, declarations and script/style bodies dropped, entities
    decoded. Text that only looks like markup (``a < b``) stays as it is."""

    _HIDDEN = ("script", "style")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)  # entities one by one: an unknown name stays text
        self.parts: list[str] = []
        self._hidden = 0

    def handle_entityref(self, name: str) -> None:
        entities = html.entities.html5
        self.handle_data(entities.get(name + ";") or entities.get(name) or "&" + name)

    def handle_charref(self, name: str) -> None:
        self.handle_data(html.unescape(f"&#{name};"))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._hidden += tag in self._HIDDEN

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)

    def unknown_decl(self, data: str) -> None:
        if data.startswith("CDATA["):  # CDATA is text
            self.handle_data(data[len("CDATA["):])


def html_to_text(text: str) -> str:
    """``text`` with its HTML markup removed and its entities decoded."""
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# ftfy's deterministic fixes, as translation tables
_LIGATURES = {ord(c): unicodedata.normalize("NFKC", c) for c in "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬆ"} | {ord("ﬅ"): "ſt"}
_FULL_WIDTH = {0x3000: " "} | {i: unicodedata.normalize("NFKC", chr(i)) for i in range(0xFF01, 0xFFF0)
                               if unicodedata.normalize("NFKC", chr(i)) != chr(i)}


def _windows_1252(code: int) -> str:
    try:
        return bytes([code]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined keep their code points
        return chr(code)


_C1_AS_CP1252 = {i: _windows_1252(i) for i in range(0x80, 0xA0)}  # as browsers read C1 control characters
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                           *range(0xFFF9, 0xFFFD)])
_CURLY = str.maketrans({"\u02bc": "'", "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\u0085]")
_TERMINAL_ESCAPE = re.compile("\x1b\\[[\\d;]*[a-zA-Z]")
_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _entity(match: re.Match) -> str:
    decoded = html.unescape(match.group())
    return match.group() if ";" in decoded else decoded  # only a whole entity, its ';' consumed


def fix_text(text: str) -> str:
    """The text fixes ``ftfy.fix_text`` makes that need no guessing, repeated until nothing changes; entities are
    decoded on each line up to the first one holding a ``<`` (from there on the text may be HTML)."""
    out, decode = [], True
    for line in re.split("(?<=\n)", text):  # each line with its line break
        decode = decode and "<" not in line
        while True:
            before = line
            if decode:
                line = _ENTITY.sub(_entity, line)
            line = line.translate(_C1_AS_CP1252).translate(_LIGATURES).translate(_FULL_WIDTH).translate(_CURLY)
            line = _LINE_BREAKS.sub("\n", line)
            line = _TERMINAL_ESCAPE.sub("", line).translate(_CONTROLS)
            line = unicodedata.normalize("NFC", line)
            if line == before:
                break
        out.append(line)
    return "".join(out)


def _clean_pass(text: str) -> str:
    """One pass of the official cleaning."""
    text = urllib.parse.unquote_plus(text).strip().lower()
    text = text.replace("<person>", "person")
    for url in _URLS:
        text = url.sub("", text)
    text = html_to_text(text)
    text = _MENTION.sub("", text)
    text = _CJK.sub("", text)
    text = _DASHES.sub("-", text)
    text = _TO_SINGLE_QUOTE.sub("'", _TO_DOUBLE_QUOTE.sub('"', text))
    for pattern, replacement in _MIDDLE:
        text = pattern.sub(replacement, text)
    if len(_JOINERS.findall(text)) > 3:
        text = _JOINERS.sub(" ", text)
    text = html.unescape(html.unescape(fix_text(text))).strip()
    for pattern, replacement in _LATE:
        text = pattern.sub(replacement, text)
    return text.strip()


def clean_caption(text: str) -> str:
    """``text`` cleaned as the official t2i code cleans captions (see the module docstring): :data:`PASSES`
    passes. Ordinary captions settle in the first, so cleaning them again changes nothing."""
    text = str(text)
    for _ in range(PASSES):
        text = _clean_pass(text)
    return text


def clean_captions(captions: Sequence[str], how: str) -> list[str]:
    """``captions`` cleaned by ``how`` (one of :data:`CLEANINGS`): ``none`` returns them as they are."""
    if how not in CLEANINGS:
        raise ValueError(f"caption cleaning '{how}' is not one of {CLEANINGS}")
    return list(captions) if how == "none" else [clean_caption(c) for c in captions]
