"""Person-window pack (`hgm pack`) vs the whole-frame training cache: bytes and decode time per subject.

    .venv/bin/python bench/pack.py PACK [--cache-dir /work/data/cache] [--subjects 50] [--repeats 3]

Loads the first `--subjects` subjects of PACK with `load_packed_subject` (JPEG/PNG/body decoding)
and, as the baseline in the same run, the same subjects from the uncompressed cache at the pack's
size (`load_cached_subject`, built from the pack's source layout into `--cache-dir` when missing;
pass the trainer's cache folder to reuse its files). Each timing is the median over subjects of the
median of `--repeats` loads (files warm in the page cache). Writes bench/results/pack.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _results import add_out_argument, median_s, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack", type=Path, help="a pack folder (hgm pack)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the whole-frame cache folder (default: a temporary one, built here)")
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    add_out_argument(ap)
    args = ap.parse_args()
    from hgm_core.runtime import configure_process

    configure_process(threads=1)  # this script is an entry point

    from hgm_core.data.cache import cache_path, load_cached_subject
    from hgm_core.data.pack import load_packed_subject, packed_subjects, read_index, subject_path

    index = read_index(args.pack)
    source, size = Path(index["source"]), index["size"]
    subjects = packed_subjects(args.pack)[: args.subjects]
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        for sid in subjects:  # build (or find) the baseline's files first: only loads are timed
            load_cached_subject(source, sid, size, cache_dir)
        pack_ms = [1e3 * median_s(lambda: load_packed_subject(args.pack, sid), args.repeats) for sid in subjects]
        cache_ms = [1e3 * median_s(lambda: load_cached_subject(source, sid, size, cache_dir), args.repeats) for sid in subjects]
        cache_bytes = [cache_path(cache_dir, source, sid, size).stat().st_size for sid in subjects]
    pack_bytes = [subject_path(args.pack, sid).stat().st_size for sid in subjects]
    report = {
        "pack": str(args.pack), "source": str(source), "size": size, "margin": index["margin"],
        "jpeg_quality": index["jpeg_quality"], "subjects": len(subjects), "repeats": args.repeats,
        "pack_decode_ms_median": statistics.median(pack_ms), "cache_load_ms_median": statistics.median(cache_ms),
        "decode_ratio_pack_over_cache": statistics.median(pack_ms) / statistics.median(cache_ms),
        "pack_kb_per_subject_mean": statistics.mean(pack_bytes) / 1024,
        "cache_kb_per_subject_mean": statistics.mean(cache_bytes) / 1024,
        "size_ratio_cache_over_pack": statistics.mean(cache_bytes) / statistics.mean(pack_bytes),
        "pack_total_mib": index.get("total_bytes", 0) / 2**20, "pack_subjects_total": len(index.get("subjects", [])),
    }
    write_results("pack", report, args.out)


if __name__ == "__main__":
    main()
