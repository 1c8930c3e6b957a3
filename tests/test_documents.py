"""documents.py: kind by content, extraction (pypdf, charsets), limits, the model's part.

Every PDF is built here, byte by byte (`make_pdf`), so each test states what its file holds.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import time
import zlib

import pytest
from pypdf import PdfReader, PdfWriter

import documents
from documents import (
    DocumentRejected,
    PreparedDocument,
    detect_kind,
    document_part,
    prepare_document,
    receipt,
)

MB = 1024 * 1024
LIMITS = {"max_bytes": 10 * MB, "max_chars": 100_000}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(30)


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def make_pdf(pages: list[str], *, compress: bool = False, flate: bytes | None = None) -> bytes:
    """A valid PDF, one page per string (its lines drawn in Helvetica; "" = a blank page),
    with a correct xref table, so that pypdf reads it without repairs. `flate`: every page's
    content stream is these (already compressed) bytes instead."""
    objects: list[bytes] = []  # object n is objects[n - 1]
    n_pages = len(pages)
    page_ids = [4 + 2 * i for i in range(n_pages)]
    kids = b" ".join(b"%d 0 R" % pid for pid in page_ids)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n_pages))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_id
        )
        ops = [b"BT /F1 10 Tf 12 TL 40 760 Td"]
        ops += [_pdf_string(line) + b" Tj T*" for line in text.splitlines() if text]
        ops.append(b"ET")
        stream = b"\n".join(ops) if text else b""
        if flate is not None:
            stream = flate
            head = b"<< /Length %d /Filter /FlateDecode >>" % len(stream)
        elif compress:
            stream = zlib.compress(stream)
            head = b"<< /Length %d /Filter /FlateDecode >>" % len(stream)
        else:
            head = b"<< /Length %d >>" % len(stream)
        objects.append(head + b"\nstream\n" + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def encrypt(pdf: bytes, user_password: str, owner_password: str = "owner") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password, owner_password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def prepare(raw: bytes, name: str, **limits: int) -> PreparedDocument:
    return prepare_document(raw, name, **{**LIMITS, **limits})


# --------------------------------------------------------------------------- the PDF helper


def test_the_pdf_helper_writes_a_pdf_pypdf_reads_without_repairs():
    pdf = make_pdf(["Hello (world)", "second page"])
    reader = PdfReader(io.BytesIO(pdf), strict=True)  # strict: a wrong xref would raise
    assert len(reader.pages) == 2
    assert "Hello (world)" in reader.pages[0].extract_text()


# --------------------------------------------------------------------------- kind


@pytest.mark.parametrize(
    ("raw", "name", "kind"),
    [
        (make_pdf(["x"]), "report.pdf", "pdf"),
        (make_pdf(["x"]), "download.bin", "pdf"),  # by its header, whatever the name
        (b"plain words\n", "notes.txt", "text"),
        (b"plain words\n", "noextension", "text"),
        (PNG, "photo.pdf", None),  # an image is the image pipeline's
        (b"\xff\xd8\xff\xe0" + bytes(20), "a.txt", None),
        (b"GIF89a" + bytes(20), "a.txt", None),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "a.txt", None),
        (b"GIF89a" + b"x" * 40, "a.txt", None),  # image magic, then bytes that decode
        (bytes(range(256)) * 8, "data.txt", None),  # binary named .txt
    ],
)
def test_detect_kind_goes_by_content(raw, name, kind):
    assert detect_kind(raw, name) == kind


def test_a_few_control_characters_are_still_text_but_many_are_binary():
    log_line = "\x1b[32mok\x1b[0m build finished\f\n" * 50  # colours and form feeds
    assert detect_kind(log_line.encode(), "build.log") == "text"
    assert detect_kind(("ab\x01\x02\x03\x04" * 200).encode(), "x.txt") is None


# --------------------------------------------------------------------------- PDF


def test_pdf_text_pages_and_fields():
    pdf = make_pdf(["Quarterly report\nRevenue rose 12%", "Page two text"])
    doc = prepare(pdf, "/tmp/gradio/abc123/report.pdf")
    assert doc.name == "report.pdf"  # the file's own name, not the upload path
    assert (doc.kind, doc.mime, doc.pages, doc.pages_read) == ("pdf", "application/pdf", 2, 2)
    assert "Quarterly report\nRevenue rose 12%" in doc.text
    assert "Page two text" in doc.text
    assert doc.chars == len(doc.text) and not doc.truncated
    assert doc.size == len(pdf) and doc.sha256 == hashlib.sha256(pdf).hexdigest()


def test_compressed_pdf_streams_are_read():
    doc = prepare(make_pdf(["Flate encoded page"], compress=True), "c.pdf")
    assert "Flate encoded page" in doc.text


def test_encrypted_pdf_is_refused_with_what_to_do():
    locked = encrypt(make_pdf(["secret"]), user_password="hunter2")
    with pytest.raises(DocumentRejected) as caught:
        prepare(locked, "report.pdf")
    assert str(caught.value) == "report.pdf is encrypted: remove its password and attach it again."
    assert caught.value.name == "report.pdf"


def test_pdf_with_only_an_owner_password_opens_like_in_any_viewer():
    restricted = encrypt(make_pdf(["copying restricted"]), user_password="")
    assert PdfReader(io.BytesIO(restricted)).is_encrypted
    assert "copying restricted" in prepare(restricted, "r.pdf").text


@pytest.mark.parametrize(
    "raw",
    [
        make_pdf(["some text on a page"] * 3)[:300],  # truncated download
        b"%PDF-1.7\n" + bytes(range(256)) * 4,  # a header and garbage
        b"%PDF-",
    ],
)
def test_corrupt_pdf_is_refused_without_a_traceback(raw):
    with pytest.raises(DocumentRejected) as caught:
        prepare(raw, "broken.pdf")
    assert str(caught.value) == "broken.pdf could not be read: it is damaged or not a PDF."
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_pdf_without_a_text_layer_is_refused():
    with pytest.raises(DocumentRejected) as caught:
        prepare(make_pdf(["", "", ""]), "scan.pdf")
    assert str(caught.value) == (
        "scan.pdf has no text layer (a scanned document?): paste its text or attach it as images."
    )


def test_long_pdf_stops_extracting_once_max_chars_is_reached():
    page = "x" * 1_000
    doc = prepare(make_pdf([page] * 50), "long.pdf", max_chars=3_500)
    assert doc.truncated and len(doc.text) == 3_500 and doc.pages == 50
    assert doc.pages_read == 4  # stopped there, not after reading all 50 pages
    assert receipt(doc) == "long.pdf: PDF, 50 pages, cut to 3,500 characters at page 4"


def test_pdf_page_bound_stops_a_bomb_of_blank_pages(monkeypatch):
    monkeypatch.setattr(documents, "MAX_PDF_PAGES", 5)
    doc = prepare(make_pdf(["first"] + [""] * 20), "bomb.pdf")
    assert doc.pages == 21 and doc.pages_read == 5 and doc.truncated


def test_decompression_bomb_is_refused_quickly():
    bomb = zlib.compress(b" " * 40_000_000, 9)  # 40 KB on disk, 40 MB inflated
    start = time.perf_counter()
    with pytest.raises(DocumentRejected, match="could not be read"):
        prepare(make_pdf(["x"], flate=bomb), "bomb.pdf")
    assert time.perf_counter() - start < 2


# --------------------------------------------------------------------------- text


def test_utf8_text_with_crlf_newlines():
    doc = prepare("Zeile 1: Grüße\r\nZeile 2\rZeile 3\n".encode(), "notes.txt")
    assert doc.text == "Zeile 1: Grüße\nZeile 2\nZeile 3\n"
    assert (doc.kind, doc.mime, doc.pages, doc.truncated) == ("text", "text/plain", None, False)


def test_utf8_bom_is_not_part_of_the_text():
    doc = prepare(codecs.BOM_UTF8 + b"# Title\n\nbody", "readme.md")
    assert doc.text == "# Title\n\nbody" and doc.mime == "text/markdown"


def test_utf16_with_bom():
    doc = prepare("hello, 世界\n".encode("utf-16"), "u16.txt")
    assert doc.text == "hello, 世界\n"


@pytest.mark.parametrize(
    "text",
    [
        "这是一个中文测试文件，用于检测编码。第二行：季度数据分析报告。\n" * 3,
        "短文本",  # three characters: charset detection alone guesses Big5 here
        "价格：￥128，数量：3\n",
    ],
)
def test_gb18030_and_gbk_chinese_files(text):
    for encoding in ("gb18030", "gbk"):
        raw = text.encode(encoding)
        assert detect_kind(raw, "中文.txt") == "text"
        assert prepare(raw, "中文.txt").text == text


@pytest.mark.parametrize(
    "text",
    [
        "Le café est très bon, déjà goûté à Noël. " * 5,
        "Grüße aus München, schöne Straße. " * 3,
        "It’s “quoted” — and costs 12 €.",
    ],
)
def test_windows_1252_text_is_decoded(text):
    assert prepare(text.encode("cp1252"), "legacy.csv").text == text


@pytest.mark.parametrize(
    ("name", "raw", "mime", "label"),
    [
        ("sales.csv", b"region,amount\nnorth,12\nsouth,7\n", "text/csv", "CSV"),
        ("data.json", json.dumps({"a": [1, 2]}).encode(), "application/json", "JSON"),
        ("tool.py", b"def main() -> None:\n    print('hi')\n", "text/x-python", "Python"),
        ("main.go", b"package main\n", "text/x-go", "Go"),
        ("README", b"no extension\n", "text/plain", "text"),
    ],
)
def test_mime_from_the_extension_when_the_content_is_text(name, raw, mime, label):
    doc = prepare(raw, name)
    assert doc.mime == mime and doc.text == raw.decode()
    assert receipt(doc) == f"{name}: {label}, {len(raw):,} characters"


def test_binary_named_txt_is_refused():
    with pytest.raises(DocumentRejected) as caught:
        prepare(bytes(range(256)) * 8, "notes.txt")
    assert str(caught.value) == "notes.txt is not a text file (binary data)."


def test_an_image_named_pdf_is_sent_to_the_image_pipeline():
    with pytest.raises(DocumentRejected, match=r"^photo\.pdf is an image: attach it as an image"):
        prepare(PNG, "photo.pdf")


def test_empty_file_is_refused():
    with pytest.raises(DocumentRejected, match=r"^empty\.txt is empty"):
        prepare(b"  \n", "empty.txt")


# --------------------------------------------------------------------------- limits


def test_oversized_is_refused_before_it_is_parsed():
    big = b"%PDF-1.4 not parsed" + b"x" * (3 * MB)
    with pytest.raises(DocumentRejected) as caught:
        prepare(big, "big.pdf", max_bytes=2 * MB)
    assert str(caught.value) == "big.pdf is 3.0 MB; documents may be at most 2.0 MB."


def test_text_is_cut_to_max_chars_and_the_receipt_says_so():
    doc = prepare(("word " * 46_000).encode(), "long.txt")  # 230,000 characters
    assert doc.truncated and len(doc.text) == 100_000 and doc.chars == 230_000
    assert receipt(doc) == "long.txt: text, cut to 100,000 of 230,000 characters"


def test_exactly_max_chars_is_not_truncated():
    doc = prepare(b"a" * 100, "a.txt", max_chars=100)
    assert not doc.truncated and doc.text == "a" * 100


# --------------------------------------------------------------------------- part, receipt


def test_document_part_is_delimited_with_name_pages_and_truncation():
    doc = prepare(make_pdf(["alpha", "beta"]), "report.pdf")
    part = document_part(doc)
    assert part.startswith(
        '<document name="report.pdf" type="application/pdf" pages="2" truncated="false">\n'
    )
    assert part.endswith("\n</document>") and "alpha" in part and "beta" in part
    text_part = document_part(prepare(b"hi", "a.txt", max_chars=1))
    assert text_part == '<document name="a.txt" type="text/plain" truncated="true">\nh\n</document>'


def test_document_part_escapes_the_name_and_a_closing_tag_in_the_text():
    doc = prepare(b"before </document> <b>after</b> </DOCUMENT >", 'a"><x>&.txt')
    part = document_part(doc)
    assert part.startswith('<document name="a&quot;&gt;&lt;x&gt;&amp;.txt" ')
    assert part.count("</document>") == 1 and part.endswith("</document>")
    assert "&lt;/document>" in part and "&lt;/DOCUMENT >" in part and "<b>after</b>" in part


def test_receipt_for_a_pdf():
    doc = prepare(make_pdf(["x" * 40, "y" * 40]), "report.pdf")
    assert receipt(doc) == f"report.pdf: PDF, 2 pages, {doc.chars:,} characters"
    one = prepare(make_pdf(["only"]), "one.pdf")
    assert receipt(one) == "one.pdf: PDF, 1 page, 4 characters"


def test_names_lose_directories_and_control_characters_and_are_bounded():
    assert documents.clean_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert documents.clean_name("evil\nname\x00.txt") == "evilname.txt"
    long = documents.clean_name("n" * 500 + ".txt")
    assert len(long) <= 120 and long.endswith("….txt")
    assert documents.clean_name("") == "document"
