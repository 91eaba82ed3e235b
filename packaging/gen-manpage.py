#!/usr/bin/env python3
"""Writes a man page (roff, section 1) from an executable's --help text, as help2man does.

    gen-manpage.py --binary PATH --name NAME --version V --date YYYY-MM-DD
                   [--subcommand WORD]... [--see-also PAGE]... -o OUT.1

The help texts of meshd, sidecar and meshctl share one shape, which this relies on:
  line 1            "NAME: one-line description"            -> NAME
  "USAGE:" block    indented command lines                  -> SYNOPSIS
  unindented prose  paragraphs                              -> DESCRIPTION (before any other header)
  "HEADER:" lines   OPTIONS:, COMMANDS:, FLAGS:, GLOBAL FLAGS (...):  -> sections of that name
Indented lines are kept as they are (no filling), unindented ones are filled paragraphs.
Each --subcommand WORD adds `BINARY WORD --help` as a section "NAME WORD".
A help text that does not start with "NAME: " is refused: the page would be wrong.
"""
import argparse
import re
import subprocess
import sys

HEADER = re.compile(r"^([A-Z][A-Z]+(?: [A-Z][A-Z]+)*)(:$| \()")


def roff_escape(text):
    """Text to roff: backslashes, dashes, quotes and non-ASCII as groff escapes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\e")
        elif ch == "-":
            out.append("\\-")
        elif ch == "`":
            out.append("\\(ga")
        elif ch == "'":
            out.append("\\(aq")
        elif ord(ch) > 126:
            out.append("\\[u%04X]" % ord(ch))
        else:
            out.append(ch)
    s = "".join(out)
    if s.startswith("."):
        s = "\\&" + s
    return s


def blocks(lines):
    """Groups lines into ('pre', [lines]) for indented runs and ('para', text) for prose."""
    result = []
    para, pre = [], []

    def flush():
        if para:
            result.append(("para", " ".join(l.strip() for l in para)))
            para.clear()
        if pre:
            result.append(("pre", list(pre)))
            pre.clear()

    for line in lines:
        if not line.strip():
            flush()
        elif line.startswith(" "):
            if para:
                flush()
            pre.append(line.rstrip())
        else:
            if pre:
                flush()
            para.append(line)
    flush()
    return result


def render_blocks(lines):
    out = []
    for kind, body in blocks(lines):
        if kind == "para":
            out.append(".PP")
            out.append(roff_escape(body))
        else:
            # common indentation removed, the rest kept; .RS indents the block as a whole
            indent = min(len(l) - len(l.lstrip(" ")) for l in body)
            out.append(".PP")
            out.append(".RS 2")
            out.append(".nf")
            out.extend(roff_escape(l[indent:]) if l[indent:] else "" for l in body)
            out.append(".fi")
            out.append(".RE")
    return out


def parse_help(text, name):
    """Splits a help text into (description, [(section, lines)]); refuses an unknown shape."""
    lines = text.rstrip("\n").split("\n")
    prefix = name + ": "
    if not lines or not lines[0].startswith(prefix):
        raise ValueError("the help text does not start with %r: %r" % (prefix, lines[0] if lines else ""))
    summary = lines[0][len(prefix):].strip()
    i = 1
    while i < len(lines) and lines[i].strip() and not HEADER.match(lines[i]):
        summary += " " + lines[i].strip()  # a summary wrapped over several lines
        i += 1
    sections = [("DESCRIPTION", [])]
    while i < len(lines):
        line = lines[i]
        m = HEADER.match(line)
        if m:
            title = m.group(1)
            body = []
            if m.group(2) != ":":
                # "GLOBAL FLAGS (note ...\n ...):": the note, up to the line ending in ':', is prose
                note = [line[len(title):].strip()]
                while not note[-1].endswith(":"):
                    i += 1
                    if i >= len(lines):
                        raise ValueError("header %r: no line ending in ':' closes it" % title)
                    note.append(lines[i].strip())
                body.append(" ".join(note)[:-1])
                body.append("")
            sections.append(("SYNOPSIS" if title == "USAGE" else title, body))
        elif sections[-1][0] == "SYNOPSIS" and line and not line.startswith(" "):
            # prose after the usage lines describes the command
            sections[0][1].append(line)
            while i + 1 < len(lines) and lines[i + 1] and not HEADER.match(lines[i + 1]):
                i += 1
                sections[0][1].append(lines[i])
            sections[0][1].append("")
        else:
            sections[-1][1].append(line)
        i += 1
    return summary, sections


def run_help(argv):
    proc = subprocess.run(argv + ["--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if proc.returncode != 0:
        raise ValueError("%s --help exited %d: %s" % (" ".join(argv), proc.returncode, proc.stderr.decode(errors="replace").strip()))
    return proc.stdout.decode("utf-8")


def main():
    ap = argparse.ArgumentParser(description="man page from --help")
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--subcommand", action="append", default=[])
    ap.add_argument("--see-also", action="append", default=[])
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    try:
        summary, sections = parse_help(run_help([args.binary]), args.name)
        subs = []
        for word in args.subcommand:
            sub_summary, sub_sections = parse_help(run_help([args.binary, word]), "%s %s" % (args.name, word))
            subs.append((word, sub_summary, sub_sections))
    except ValueError as e:
        print("gen-manpage: %s: %s" % (args.name, e), file=sys.stderr)
        return 1

    out = [
        '.\\" Generated by packaging/gen-manpage.py from `%s --help`; do not edit.' % args.name,
        '.TH %s 1 "%s" "swift-mesh %s" "swift-mesh manual"' % (args.name.upper(), args.date, roff_escape(args.version)),
        ".SH NAME",
        "%s \\- %s" % (roff_escape(args.name), roff_escape(summary)),
    ]
    order = [s for s in sections if s[0] == "SYNOPSIS"] + [s for s in sections if s[0] != "SYNOPSIS"]
    for title, body in order:
        if not any(l.strip() for l in body):
            continue
        out.append(".SH " + roff_escape(title))
        out.extend(render_blocks(body))
    for word, sub_summary, sub_sections in subs:
        out.append(".SH " + roff_escape(("%s %s" % (args.name, word)).upper()))
        out.append(".PP")
        out.append(roff_escape("%s %s: %s" % (args.name, word, sub_summary)))
        for title, body in sub_sections:
            if not any(l.strip() for l in body):
                continue
            out.append(".SS " + roff_escape(title))
            out.extend(render_blocks(body))
    if args.see_also:
        out.append(".SH SEE ALSO")
        out.append(", ".join("\\fB%s\\fR(%s)" % tuple(roff_escape(p) for p in page.rstrip(")").split("("))
                             for page in args.see_also))
    with open(args.output, "w", encoding="ascii") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
