"""What the documentation names exists: every repository path in README.md, docs/ and
weights/README.md, and every checkpoint name a reader would pass to `magn` (a newcomer
follows these first; a renamed file or retired checkpoint must not leave them pointing
at nothing)."""
import re
from pathlib import Path


from magncli.weights import load_manifest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "train" / "README.md", REPO / "weights" / "README.md",
        *sorted((REPO / "weights" / "notes").glob("*.md")), *sorted((REPO / "docs").glob("*.md"))]
# A path in the repository: a top folder of the tree, then path characters; not what a
# recorded command wrote (`-o FILE`: the cards keep the commands that made their tables).
PATH = re.compile(r"(?<![\w./~-])(?<!-o )(?<!--output )"
                  r"((?:magncli|train|tests|benchmarks|scripts|docs|weights|examples|\.ci)/[\w./-]*\w)")
# A published checkpoint's name: variant-task[-gray|-color].
CHECKPOINT = re.compile(r"(?<![\w/-])(magn-[a-z-]*?(?:denoise|dejpeg|demosaic)(?:-gray|-color)?)(?![\w.-])")
# Names of the past, kept in the record on purpose (the first CPU checkpoints, replaced).
RETIRED = re.compile(r"magn-tiny-local-|magn-denoise-gray-s\d+")


def _mentions(pattern):
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in pattern.finditer(line):
                yield doc.relative_to(REPO), number, match.group(1)


def test_every_path_the_docs_name_exists():
    assert len(list(_mentions(PATH))) > 50              # the pattern reads the docs at all
    missing = [(str(doc), n, path) for doc, n, path in _mentions(PATH)
               if not any(part.isupper() for part in re.split(r"[/._-]", path))      # NAME.toml, RUN/...
               and not (REPO / path).exists() and not (REPO / doc.parent / path).exists()]
    assert missing == []


def test_every_checkpoint_name_the_docs_use_is_published():
    published = {e.name for e in load_manifest(REPO / "weights" / "manifest.json").entries}
    assert {name for _, _, name in _mentions(CHECKPOINT)} >= published    # every one is documented
    unknown = [(str(doc), n, name) for doc, n, name in _mentions(CHECKPOINT)
               if name not in published and not RETIRED.match(name)]
    assert unknown == []
