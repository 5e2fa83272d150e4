"""What operators read keeps up with the code: every key of the table in control/config.c is
in docs/config.md (from which sluice.conf(5) is generated) and in the shipped
packaging/sluice.conf (commented, with its default; the bash completion of `sluiced -o`
reads the keys from there), and every option a program's --help lists is in its man page
(the bash completion reads the options from --help)."""
import pathlib
import re

import pytest
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def code_keys():
    src = (ROOT / "control/config.c").read_text()
    table = src[src.index("static const struct key keys[] = {"):]
    table = table[:table.index("\n};")]
    keys = set(re.findall(r'^\s*(?:[A-Z0-9]+\(|\{)"(\w+)", "(\w+)"', table, re.M))
    assert len(keys) > 30, keys
    return {f"{s}.{k}" for s, k in keys}


def section_keys(path, section_re, key_re, end_re=None):
    """section.key for each line matching key_re below a line matching section_re (whose
    group 1 is the section); a line matching end_re ends the section."""
    keys, section = set(), None
    for line in (ROOT / path).read_text().splitlines():
        m = re.match(section_re, line)
        if m:
            section = m.group(1)
            continue
        if end_re and re.match(end_re, line):
            section = None
        m = re.match(key_re, line)
        if m and section:
            keys.add(f"{section}.{m.group(1)}")
    return keys


def doc_keys():
    return section_keys("docs/config.md", r"## \[(\w+)\]", r"\| `(\w+)` \|", end_re=r"## ")


def shipped_keys():
    # keys left at their default are commented out, and so is the whole [dpdk] section
    return section_keys("packaging/sluice.conf", r"[;#]?\[(\w+)\]\s*$", r"[;#]?(\w+) =")


def test_docs_list_every_key():
    code = code_keys()
    assert doc_keys() == code, f"docs/config.md: missing {code - doc_keys()}, unknown {doc_keys() - code}"


def test_shipped_config_lists_every_key():
    code, shipped = code_keys(), shipped_keys()
    assert shipped == code, f"packaging/sluice.conf: missing {code - shipped}, unknown {shipped - code}"


def test_man_page_has_every_key(tmp_path):
    out = tmp_path / "sluice.conf.5"
    subprocess.run([sys.executable, ROOT / "packaging/man/config2man.py", ROOT / "docs/config.md", out, "0"],
                   check=True)
    text = out.read_text()
    for key in code_keys():
        section, name = key.split(".")
        assert f".SS [{section}]" in text, section
        assert re.search(rf"^\\fB{re.escape(name)}\\fR \(", text, re.M), key


PROGRAMS = {"sluice": ("client/sluice", "sluice.1"), "sluiced": ("daemon/sluiced", "sluiced.8"),
            "sluice-run": ("tools/sluice-run", "sluice-run.1"), "sluice-gguf": ("tools/sluice-gguf", "sluice-gguf.1")}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_man_page_has_every_option(build_dir, program):
    exe, page = PROGRAMS[program]
    r = subprocess.run([build_dir / exe, "--help"], capture_output=True, text=True)
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", r.stdout + r.stderr))
    assert len(options) >= 1, r.stdout + r.stderr
    man = (ROOT / "packaging/man" / page).read_text().replace("\\-", "-")
    missing = sorted(o for o in options if o not in man)
    assert not missing, f"packaging/man/{page} does not document {missing}"
