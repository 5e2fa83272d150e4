#!/usr/bin/env python3
"""config2man.py — writes sluice.conf(5) from docs/config.md, so that the man page and the
reference cannot drift: every key table row becomes a tagged paragraph. It understands the
Markdown that docs/config.md uses (headings, paragraphs, "- " lists, tables, `code`,
*emphasis*, **bold**, [links](...)) and fails on a table row it cannot read.

    config2man.py docs/config.md sluice.conf.5 VERSION
"""
import re
import sys

CHARS = {"—": r"\(em", "–": r"\(en", "≤": r"\(<=", "≥": r"\(>=", "…": "...", "×": r"\(mu",
         "±": r"\(+-", "→": r"\(->", "’": "'", "“": r"\(lq", "”": r"\(rq", "§": r"\(sc"}


def esc(text):
    """Plain text to roff: backslashes, special characters, then inline Markdown."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    for k, v in CHARS.items():
        text = text.replace(k, v)
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"\\fI\1\\fR", text)
    if any(ord(c) > 127 for c in text):
        raise SystemExit(f"config2man: add a roff escape for: {text!r}")
    return text


def line(text):
    """A text line must not start with a control character."""
    return "\\&" + text if text[:1] in ".'" else text


def cells(row):
    row = row.strip()
    if not (row.startswith("|") and row.endswith("|")):
        raise SystemExit(f"config2man: not a table row: {row!r}")
    return [c.strip() for c in row[1:-1].split("|")]


def table(rows, out):
    head = cells(rows[0])
    if head[:1] != ["key"] or "meaning" not in head:
        raise SystemExit(f"config2man: unexpected table header: {head}")
    for r in rows[2:]:
        c = dict(zip(head, cells(r)))
        if len(c) != len(head) or not c["key"].startswith("`"):
            raise SystemExit(f"config2man: bad row: {r!r}")
        attrs = [c["type"]]
        if c.get("default"):
            attrs.append("default " + c["default"])
        if c.get("range"):
            attrs.append(c["range"])
        if c.get("reload"):
            attrs.append("reload: " + c["reload"])
        out.append(".TP")
        out.append(line(esc(c["key"]) + " (" + esc("; ".join(attrs)) + ")"))
        out.append(line(esc(c["meaning"])) if c["meaning"] else r"\&")


def convert(md, version):
    out = [f'.TH SLUICE.CONF 5 "" "sluice {version}" "File formats"',
           ".SH NAME", r"sluice.conf \- configuration file of the sluice inference server",
           ".SH SYNOPSIS", r"\fI/etc/sluice/sluice.conf\fR", ".SH DESCRIPTION",
           r"\fBsluiced\fR(8) reads its configuration from \fI/etc/sluice/sluice.conf\fR, or from",
           r"the file given with \fB\-c\fR; \fBsluiced \-\-check\-config\fR validates it and exits.",
           "The file the package installs shows every key, commented out, with its default."]
    lines = md.splitlines()
    i = 0
    # the reference's introduction speaks of the source tree: the man page has its own
    while i < len(lines) and not lines[i].startswith("## "):
        i += 1
    in_keys = False
    para = []

    def flush():
        if para:
            out.append(line(esc(" ".join(para))))
            para.clear()

    while i < len(lines):
        s = lines[i]
        if s.startswith("# "):
            i += 1
            continue
        if s.startswith("## "):
            flush()
            title = s[3:].strip()
            if title.startswith("["):
                if not in_keys:
                    out.append(".SH KEYS")
                    in_keys = True
                out.append(f".SS {esc(title)}")
            else:
                in_keys = False
                out.append(".SH " + esc(title.upper()))
            i += 1
            continue
        if s.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            table(rows, out)
            out.append(".PP")
            continue
        if s.startswith("- "):
            flush()
            item = [s[2:].strip()]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                item.append(lines[i].strip())
                i += 1
            out.append(r".IP \(bu 2")
            out.append(line(esc(" ".join(item))))
            continue
        if not s.strip():
            flush()
            if out[-1] not in (".PP", ".SH DESCRIPTION") and not out[-1].startswith((".SH", ".SS")):
                out.append(".PP")
            i += 1
            continue
        para.append(s.strip())
        i += 1
    flush()
    while out[-1] == ".PP":
        out.pop()
    out += [".SH FILES", ".TP", r"\fI/etc/sluice/sluice.conf\fR",
            "The configuration file (a conffile of the Debian package).",
            ".TP", r"\fI/var/lib/sluice/models/\fR", "Where models go.",
            ".SH SEE ALSO", r"\fBsluiced\fR(8), \fBsluice\fR(1), \fBsystemctl\fR(1)"]
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    md = open(sys.argv[1], encoding="utf-8").read()
    text = convert(md, sys.argv[3])
    with open(sys.argv[2], "w", encoding="ascii") as f:
        f.write(text)


if __name__ == "__main__":
    main()
