"""Generate meshserve/protos from protos/: the one place generated code comes from.

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # exit 1 when the checked-in code is stale

Generated modules register their descriptors in meshserve's own descriptor pool (not
protobuf's default one), so meshserve and tritonclient, which both define the
`inference` package, can be imported into one process.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "meshserve" / "protos"
PACKAGE = "meshserve.protos"
BIN = Path(sys.executable).parent
POOL_MODULE = (
    '"""Descriptor pool of meshserve\'s generated protobuf modules."""\n\n'
    "from google.protobuf import descriptor_pool\n\nPOOL = descriptor_pool.DescriptorPool()\n"
)


def _top_packages(files: list[Path]) -> set[str]:
    return {f.relative_to(PROTO_ROOT).parts[0] for f in files}


def _rewrite(path: Path, tops: set[str]) -> None:
    text = path.read_text()
    # One pass over all top-level packages: rewriting one at a time would rewrite
    # "meshserve.protos.inference" again for the top-level package "meshserve".
    names = "|".join(sorted(map(re.escape, tops)))
    text = re.sub(rf"^(from|import) ({names})(\.| import)", rf"\1 {PACKAGE}.\2\3", text, flags=re.M)
    if path.name.endswith("_pb2.py"):
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            f"from {PACKAGE}._pool import POOL as _POOL\n",
        ).replace("_descriptor_pool.Default()", "_POOL")
    path.write_text(text)


def generate(out: Path) -> None:
    files = sorted(PROTO_ROOT.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out=quiet:{out}", f"--mypy_grpc_out=quiet:{out}",
        *[str(f) for f in files],
    ]
    subprocess.run(cmd, check=True)
    tops = _top_packages(files)
    for path in out.rglob("*.py*"):
        _rewrite(path, tops)
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (out / "_pool.py").write_text(POOL_MODULE)
    (out / "py.typed").touch()


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs if d != "__pycache__")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if meshserve/protos is stale")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "protos"
        generate(fresh)
        shutil.rmtree(OUT / "__pycache__", ignore_errors=True)
        if not OUT.exists() or not _same_tree(fresh, OUT):
            print("meshserve/protos is stale: run `make protos` and commit the result", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
