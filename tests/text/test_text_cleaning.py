"""nar.text.cleaning: the official t2i caption cleaning (LlamaGen language/t5.py clean_caption, run by NAR-images
before FLAN-T5 in training and sampling), standard library only. The expected texts are what the official code
(with ftfy and beautifulsoup4) gives for the same captions."""

from __future__ import annotations

import pytest

from nar.text.cleaning import CLEANINGS, clean_caption, clean_captions, fix_text, html_to_text

OFFICIAL = [
    # URLs: a scheme and a dotted name on a listed ending go; a query string stays, as in the official
    ("A photo of a CAT at https://example.com/cats?id=3", "a photo of a cat at ?id=3"),
    ("see www.shop.org/deals for more", "see for more"),
    ("a dog on foo.com", "a dog on"),
    # HTML tags and entities, also doubly escaped ones
    ("<b>Bold</b> text &amp; more &lt;i&gt;tags&lt;/i&gt;", "bold text more tags< i>"),
    ("Fish &amp;amp; chips", "fish ; chips"),
    ("@bob feeding ducks with @alice_2", "feeding ducks with"),
    ("A RED Double-Decker BUS", "a red double-decker bus"),
    # runs of dots and spaces (not of '!'), tabs and line breaks
    ("what...   a    view!!!  ", "what a view!!!"),
    ("tabs\tand\nnewlines", "tabs and newlines"),
    # CJK ideographs go; kana and Hangul stay
    ("一只猫 a cat in Tokyo 東京", "a cat in tokyo"),
    ("かな and 한국 stay", "かな and 한국 stay"),
    ("***SALE*** [new] (today)", "sale new today"),
    ("caf%C3%A9 terrace", "café terrace"),
    ("ＦＵＬＬ width “quotes”", 'full width "quotes"'),
    ("pic_of_the_day-2-3", "pic of the day 2 3"),
    ("IMG_1234.jpg a sunset", "a sunset"),
    # ordinary captions: only the case changes
    ("A man riding a bike down a street.", "a man riding a bike down a street."),
    ("a cat, a dog and a bird", "a cat, a dog and a bird"),
]


@pytest.mark.parametrize("caption,cleaned", OFFICIAL)
def test_official_cleaning(caption, cleaned):
    assert clean_caption(caption) == cleaned


@pytest.mark.parametrize("caption", [c for c, _ in OFFICIAL] + [
    "&amp;amp;lt;b&amp;amp;gt; nested %2541 escapes", '"\'""quoted\'"', "a - b _ c - d _ e", "'", "", "   ",
    "x<y and a < b", "ﬁne ﬂowers\u00a0\x85end", "<script>var x</script>visible", "1:23 ", ".hidden"])
def test_cleaning_is_idempotent(caption):
    once = clean_caption(caption)
    assert clean_caption(once) == once


def test_html_to_text_keeps_text_that_only_looks_like_markup():
    assert html_to_text("a <i>b</i><!-- c --><script>d</script> &eacute; &#150; &notanentity; x<y") == \
        "a b é – &notanentity x<y"


def test_fix_text_makes_only_the_fixes_that_need_no_guessing():
    assert fix_text("ﬁ ＡＢ\u3000“q” ‚s‛ \x85\x07\ufeff &amp;amp; \r\nx") == 'fi AB "q" \'s\' … & \nx'
    assert fix_text("cafÃ©") == "cafÃ©"  # mojibake repair is ftfy's guesswork: not done
    assert fix_text("<b> &amp;") == "<b> &amp;"  # a line with '<' may be HTML: its entities are left


def test_clean_captions_by_name():
    captions = ["A CAT", "<b>dog</b>"]
    assert clean_captions(captions, "none") == captions
    assert clean_captions(captions, "official") == ["a cat", "dog"]
    assert CLEANINGS == ("none", "official")
    with pytest.raises(ValueError, match="'lower' is not one of"):
        clean_captions(captions, "lower")
