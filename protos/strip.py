"""Strip etcd's Go-only proto options and imports, and vendor the result for cwm.

Usage::

    python protos/strip.py --ref v3.5.4 --origin "where the files came from" API_DIR

``API_DIR`` is etcd's ``api/`` directory (or the ``go.etcd.io/etcd/api/v3`` Go
module, which holds the same files; etcd 3.4's repository root works too).
The stripped ``rpc.proto``, ``kv.proto`` and ``auth.proto`` are written to
``protos/cwm/etcd/etcdrpc/`` with a header naming the etcd ref and the sha256
of each original file.

What goes: the gogoproto, google.api, grpc-gateway/openapiv2 and versionpb
imports; every ``option (...)`` statement of those extensions, including the
multi-line ``option (google.api.http) = {...};`` blocks, removed by balancing
braces (a line-based ``sed`` breaks on blocks of an unexpected length);
``option go_package``; and ``[(gogoproto...)]`` / ``[(versionpb...)]`` field
options. etcd's own imports are rewritten to ``cwm/etcd/etcdrpc/...`` so
protoc emits ``from cwm.etcd.etcdrpc import kv_pb2``. Proto package names
(``etcdserverpb``, ``mvccpb``, ``authpb``) stay: they are part of the gRPC
method paths. Comments and strings are never touched.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_PATH = "cwm/etcd/etcdrpc"

# Output name -> where the original lives under API_DIR (3.5+/Go module layout, then 3.4).
SOURCES: dict[str, tuple[str, ...]] = {
    "rpc.proto": ("etcdserverpb/rpc.proto", "etcdserver/etcdserverpb/rpc.proto"),
    "kv.proto": ("mvccpb/kv.proto", "mvcc/mvccpb/kv.proto"),
    "auth.proto": ("authpb/auth.proto", "auth/authpb/auth.proto"),
}

DROPPED_IMPORTS = (
    "gogoproto/gogo.proto",
    "google/api/annotations.proto",
    "protoc-gen-openapiv2/options/annotations.proto",
    "etcd/api/versionpb/version.proto",
)
REWRITTEN_IMPORTS = {
    "etcd/api/mvccpb/kv.proto": f"{PACKAGE_PATH}/kv.proto",
    "etcd/api/authpb/auth.proto": f"{PACKAGE_PATH}/auth.proto",
    "etcd/mvcc/mvccpb/kv.proto": f"{PACKAGE_PATH}/kv.proto",
    "etcd/auth/authpb/auth.proto": f"{PACKAGE_PATH}/auth.proto",
}
# Extension options that only the Go code generators and the HTTP gateway read.
GO_ONLY_OPTIONS = ("gogoproto.", "google.api.", "grpc.gateway.", "versionpb.")
# Words that must not survive outside comments.
FORBIDDEN = ("gogoproto", "google.api", "openapiv2", "versionpb", "go_package")

_TOKEN = re.compile(
    r"""
    (?P<comment>//[^\n]*|/\*.*?\*/)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<space>\s+)
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class Token:
    """One lexical token: its kind, text and span in the source."""

    def __init__(self, kind: str, text: str, start: int, end: int) -> None:
        self.kind = kind
        self.text = text
        self.start = start
        self.end = end


def tokenize(text: str) -> list[Token]:
    """Split proto source into tokens; comments and strings are single tokens."""
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        tokens.append(Token(kind, match.group(), match.start(), match.end()))
    return tokens


def _code(tokens: list[Token], i: int) -> int:
    """Index of the next token at or after ``i`` that is not space or a comment."""
    while i < len(tokens) and tokens[i].kind in ("space", "comment"):
        i += 1
    return i


def _statement_end(tokens: list[Token], i: int) -> int:
    """Index just past the ``;`` ending the statement that starts at ``i``, balancing braces."""
    depth = 0
    while i < len(tokens):
        token = tokens[i]
        if token.kind == "other":
            if token.text == "{":
                depth += 1
            elif token.text == "}":
                depth -= 1
            elif token.text == ";" and depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated statement")


def _option_name(tokens: list[Token], i: int) -> str:
    """The name of the option whose ``option`` keyword is at ``i``: ``(a.b)`` for an extension."""
    j = _code(tokens, i + 1)
    if tokens[j].text == "(":
        return "(" + tokens[_code(tokens, j + 1)].text + ")"
    return tokens[j].text


def _is_go_only(name: str) -> bool:
    """Whether an option (``go_package``, ``(gogoproto.x)``...) is only for Go or the HTTP gateway."""
    bare = name.strip("()")
    return name == "go_package" or any(bare.startswith(prefix) for prefix in GO_ONLY_OPTIONS)


def strip(text: str) -> str:
    """Return ``text`` without Go-only options and imports, with etcd imports rewritten."""
    tokens = tokenize(text)
    # (start, end, replacement) edits on the source text, applied back to front.
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.kind == "word" and token.text == "import":
            j = _code(tokens, i + 1)
            path = tokens[j].text[1:-1] if tokens[j].kind == "string" else ""
            end = _statement_end(tokens, i)
            if path in DROPPED_IMPORTS:
                edits.append((token.start, tokens[end - 1].end, ""))
            elif path in REWRITTEN_IMPORTS:
                edits.append((tokens[j].start, tokens[j].end, '"' + REWRITTEN_IMPORTS[path] + '"'))
            i = end
            continue
        if token.kind == "word" and token.text == "option":
            end = _statement_end(tokens, i)
            if _is_go_only(_option_name(tokens, i)):
                edits.append((token.start, tokens[end - 1].end, ""))
            i = end
            continue
        if token.kind == "other" and token.text == "[":
            close = i
            while tokens[close].text != "]":
                close += 1
            inner = "".join(t.text for t in tokens[i + 1 : close])
            kept = [part.strip() for part in _split_options(inner) if not _is_go_only(_field_option_name(part))]
            if len(kept) != len(_split_options(inner)):
                start = token.start
                # Take the space before the bracket with it.
                if i > 0 and tokens[i - 1].kind == "space" and "\n" not in tokens[i - 1].text:
                    start = tokens[i - 1].start
                replacement = " [" + ", ".join(kept) + "]" if kept else ""
                edits.append((start, tokens[close].end, replacement))
            i = close + 1
            continue
        i += 1
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return _tidy(text)


def _split_options(inner: str) -> list[str]:
    """Split the inside of ``[...]`` at top-level commas (strings may hold commas)."""
    parts, current, quote = [], "", ""
    for char in inner:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current += char
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _field_option_name(part: str) -> str:
    return part.split("=", 1)[0].strip()


def _tidy(text: str) -> str:
    """Drop lines left blank by a removal, the dangling grpc-gateway comment, and runs of blank lines."""
    lines = ["" if line.strip() == "" else line for line in text.split("\n")]
    text = "\n".join(line for line in lines if line.strip() != "// for grpc-gateway")
    text = re.sub(r"\{\n\n+", "{\n", text)
    text = re.sub(r"\n\n+([ \t]*\})", r"\n\1", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def check(text: str) -> None:
    """Fail if any Go-only name survived outside comments."""
    for token in tokenize(text):
        if token.kind in ("comment", "space"):
            continue
        for word in FORBIDDEN:
            if word in token.text:
                raise ValueError(f"{word!r} survived stripping: {token.text!r}")


def header(source: str, ref: str, origin: str, digest: str) -> str:
    """The comment naming where a vendored file came from."""
    lines = [
        f"// etcd {ref} {source} (Apache License 2.0, Copyright The etcd Authors).",
        f"// Original sha256: {digest}",
    ]
    if origin:
        lines.append(f"// Obtained from: {origin}")
    lines += [
        "// Go-only options and imports stripped, etcd imports rewritten, by protos/strip.py.",
        "// Regenerate with that script; never edit by hand. Field numbers are checked by",
        "// tests/unit/test_etcd_protos.py.",
        "",
    ]
    return "\n".join(lines) + "\n"


def vendor(api_dir: Path, ref: str, origin: str, out_dir: Path) -> list[Path]:
    """Strip the three originals under ``api_dir`` into ``out_dir``; returns the written paths."""
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, candidates in SOURCES.items():
        source = next((c for c in candidates if (api_dir / c).is_file()), None)
        if source is None:
            raise FileNotFoundError(f"none of {candidates} under {api_dir}")
        raw = (api_dir / source).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        stripped = strip(raw.decode("utf-8"))
        check(stripped)
        target = out_dir / name
        shown = "api/" + source if source == candidates[0] else source
        target.write_text(header(shown, ref, origin, digest) + stripped, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("api_dir", type=Path, help="etcd's api/ directory (or the Go module root)")
    parser.add_argument("--ref", required=True, help="the etcd tag or commit the files are from")
    parser.add_argument("--origin", default="", help="where the files were obtained, for the header")
    parser.add_argument("--out", type=Path, default=HERE / PACKAGE_PATH, help="output directory")
    args = parser.parse_args(argv)
    for path in vendor(args.api_dir, args.ref, args.origin, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
