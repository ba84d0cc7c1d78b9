"""Our GGUF writer (quantize/llamacpp.py) against llama.cpp's own convert_hf_to_gguf.py, on one model folder.

    python bench/gguf_writer_vs_converter.py --llama-cpp SRC --model FOLDER --out DIR

SRC is a llama.cpp source tree at the pinned commit (e.g. the `vendor/llama.cpp` folder of the
llama-cpp-python 0.3.36 sdist; its converter imports sentencepiece). For `--outtype f32` and `auto`, both
write a file; printed: whether the tensor names, types and bytes are equal, and every metadata key that only
one file has or that differs (the tokenizer keys may differ: the runtime is given our tokenizer's ids).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def metadata(reader) -> dict:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except (ValueError, TypeError, IndexError):
            out[key] = None
    return out


def compare(official: Path, ours: Path) -> None:
    import gguf

    a, b = gguf.GGUFReader(str(official)), gguf.GGUFReader(str(ours))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    differ = [n for n in ta if n in tb and (ta[n].tensor_type != tb[n].tensor_type
                                            or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)))]
    print(f"  tensors: {len(ta)} official, {len(tb)} ours, same names: {set(ta) == set(tb)}, "
          f"differing in type or bytes: {len(differ)} {differ[:5]}")
    ma, mb = metadata(a), metadata(b)
    print(f"  keys only in the official file: {sorted(set(ma) - set(mb))}")
    print(f"  keys only in ours: {sorted(set(mb) - set(ma))}")
    for key in sorted(set(ma) & set(mb)):
        if ma[key] != mb[key]:
            print(f"  differs: {key}: {str(ma[key])[:60]} | {str(mb[key])[:60]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree (holds convert_hf_to_gguf.py)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    src, out = Path(args.llama_cpp), Path(args.out)
    if not (src / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"error: {src} has no convert_hf_to_gguf.py")
    out.mkdir(parents=True, exist_ok=True)
    from unlearn_audit.quantize.llamacpp import write_gguf

    for outtype in ("f32", "auto"):
        official = out / f"official-{outtype}.gguf"
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), args.model, "--outfile", str(official),
                        "--outtype", outtype], check=True, env=env, capture_output=True)
        info = write_gguf(args.model, out / f"ours-{outtype}.gguf", outtype)
        print(f"--outtype {outtype} (ours wrote {info['outtype']}):")
        compare(official, out / f"ours-{outtype}.gguf")


if __name__ == "__main__":
    main()
